"""Export models as SavedModels that follow the kd_tf serving contract.

Every export is a SavedModel whose `serving_default` signature takes one
input named `images` (uint8 `[batch, H, W, C]`, batch dimension `None`) and
returns a dict with `logits` (float32 `[batch, classes]`), `probabilities`
(float32, softmax of the logits), `classes` (int64, argmax of the logits)
and `class_names` (string); `serving_images` takes encoded image files
(`image_bytes`) and returns the same; `assets/labels.txt` names the classes
(see `kd_tf.export.contract`). Such a directory can be served by TF Serving, inspected with
`saved_model_cli` and converted to TFLite.

Exports are versioned the way TF Serving expects
(`<saved_models_dir>/<stage>/<N>`) and written atomically (into a temporary
sibling directory that is moved into place only once the reloaded export
has been verified, see `kd_tf.atomic`); an existing export is replaced only
when asked to (`overwrite=True`), and then atomically too.
"""

from kd_tf.export.contract import (
    ASSETS,
    ASSETS_EXTRA,
    IMAGE_BYTES_NAME,
    IMAGES_SIGNATURE_KEY,
    INPUT_NAME,
    LABELS_FILE,
    SIGNATURE_KEY,
    ServingModel,
)
from kd_tf.export.loading import (
    check_class_names,
    check_classes,
    check_fits,
    keras_model_of,
    load_serving_model,
    recorded_class_names,
)
from kd_tf.export.versions import assets_extra_dir, next_version_dir, resolve_export_dir
from kd_tf.export.writing import export_model

__all__ = [
    "ASSETS",
    "ASSETS_EXTRA",
    "IMAGES_SIGNATURE_KEY",
    "IMAGE_BYTES_NAME",
    "INPUT_NAME",
    "LABELS_FILE",
    "SIGNATURE_KEY",
    "ServingModel",
    "assets_extra_dir",
    "check_class_names",
    "check_classes",
    "check_fits",
    "export_model",
    "keras_model_of",
    "load_serving_model",
    "next_version_dir",
    "recorded_class_names",
    "resolve_export_dir",
]
