"""Export models as SavedModels that follow the kd_tf serving contract.

Every export is a SavedModel whose `serving_default` signature takes one
input named `images` (uint8 `[batch, H, W, C]`, batch dimension `None`) and
returns a dict with `logits` (float32 `[batch, classes]`), `probabilities`
(float32, softmax of the logits) and `classes` (int64, argmax of the logits).
Such a directory can be served by TF Serving, inspected with
`saved_model_cli` and converted to TFLite.

Exports are versioned the way TF Serving expects
(`<saved_models_dir>/<stage>/<N>`) and written atomically (into a temporary
sibling directory that is moved into place only once the reloaded export
has been verified, see `kd_tf.atomic`); an existing export is replaced only
when asked to (`overwrite=True`), and then atomically too.
"""

from kd_tf.export.contract import ASSETS_EXTRA, INPUT_NAME, SIGNATURE_KEY, ServingModel
from kd_tf.export.loading import check_classes, check_fits, fingerprint, load_serving_model
from kd_tf.export.versions import (
    NextVersion,
    assets_extra_dir,
    next_version_dir,
    resolve_export_dir,
)
from kd_tf.export.writing import export_model

__all__ = [
    "ASSETS_EXTRA",
    "INPUT_NAME",
    "NextVersion",
    "SIGNATURE_KEY",
    "ServingModel",
    "assets_extra_dir",
    "check_classes",
    "check_fits",
    "export_model",
    "fingerprint",
    "load_serving_model",
    "next_version_dir",
    "resolve_export_dir",
]
