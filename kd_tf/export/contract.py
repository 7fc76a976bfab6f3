"""The kd_tf serving contract, and `ServingModel`, a model that follows it.

Every export is a SavedModel whose `serving_default` signature takes one
input named `images` (uint8 `[batch, H, W, C]`, batch dimension `None`) and
returns a dict with `logits` (float32 `[batch, classes]`), `probabilities`
(float32, softmax of the logits), `classes` (int64, argmax of the logits)
and `class_names` (string, the name of each predicted class). Its second
signature, `serving_images` (for a model of a fixed H x W with 1 or 3
channels), takes `image_bytes` (string `[batch]`: PNG, JPEG, BMP or GIF
files of any size), preprocesses them as training did
(`kd_tf.preprocessing`) and returns the same outputs. The class names, one a
line in class order, are the SavedModel's asset `assets/labels.txt` (the
TF Serving and TFLite convention).
"""

import re

import keras
import numpy as np
import tensorflow as tf

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
IMAGES_SIGNATURE_KEY = "serving_images"
IMAGE_BYTES_NAME = "image_bytes"
ASSETS_EXTRA = "assets.extra"
# The class names, one a line in class order, among a SavedModel's assets.
LABELS_FILE = "labels.txt"
ASSETS = "assets"
# The Keras architecture (`model.to_json()`) of an export, in `ASSETS_EXTRA`:
# with the SavedModel's variables it rebuilds the model, whose layers then
# serve as hints (`loading.keras_model_of`).
ARCHITECTURE = "architecture.json"
# Image dtypes a teacher may take besides the contract's uint8 (see
# `load_serving_model(float_input=True)` and `kd_tf.teacher`).
FLOAT_INPUT_DTYPES = ("float16", "bfloat16", "float32", "float64")

_TF_NODE_PREFIX = re.compile(r"\{\{[^}]*\}\}")


class ServingModel:
    """A model loaded from disk that follows the serving contract.

    Build it with `load_serving_model()`.

    Attributes:
        image_shape: `(H, W, C)` of the input images, as declared by the
            model (`None` for a dimension it leaves open).
        num_classes: Number of classes (last dimension of the logits).
        path: Path the model was loaded from.
        input_dtype: The images' `tf.DType`: uint8 under the contract, a
            float type for a teacher loaded with `float_input=True`.
        class_names: The name of each class (its `assets/labels.txt`), or
            None when the model records none (a foreign model, a `.keras` file).
    """

    def __init__(
        self, path, serving_fn, image_shape, num_classes, resource, input_dtype=tf.uint8,
        class_names=None,
    ):
        """Wrap a loaded model.

        Args:
            path: Path the model was loaded from.
            serving_fn: Callable mapping a uint8 image tensor to a dict that
                holds at least `"logits"`.
            image_shape: `(H, W, C)` of the input images.
            num_classes: Number of classes.
            resource: The loaded object `serving_fn` belongs to; it is kept
                alive for as long as this `ServingModel`.
            input_dtype: The images' `tf.DType`.
            class_names: The class names, or None.
        """
        self.path = path
        self.class_names = None if class_names is None else tuple(class_names)
        self.input_dtype = tf.as_dtype(input_dtype)
        self.image_shape = image_shape
        self.num_classes = num_classes
        self._serving_fn = serving_fn
        self._resource = resource

    @property
    def resource(self):
        """The loaded object behind the model: the `keras.Model` of a `.keras`
        file, or what `tf.saved_model.load` returned."""
        return self._resource

    def outputs(self, images):
        """Run the model and return all its outputs.

        Works eagerly and inside a `tf.function`.

        Args:
            images: tensor or array `[batch, H, W, C]` of `input_dtype`.

        Returns:
            Dict of tensors with at least `"logits"` (float32
            `[batch, classes]`); for a contract-following model also
            `"probabilities"` and `"classes"`.
        """
        images = tf.convert_to_tensor(images)
        if images.dtype != self.input_dtype:
            raise TypeError(
                f"{self.path} takes {self.input_dtype.name} images; received {images.dtype.name}"
            )
        return self._serving_fn(images)

    def logits(self, images):
        """Return the float32 logits of `images`.

        Works eagerly and inside a `tf.function` (e.g. a Keras `train_step`).

        Args:
            images: uint8 tensor or array `[batch, H, W, C]`.

        Returns:
            float32 tensor `[batch, classes]`.
        """
        return tf.cast(self.outputs(images)["logits"], tf.float32)

    def predict_logits(self, images, batch_size=1024):
        """Return the logits of a numpy array of images, batch by batch.

        Args:
            images: uint8 array `[N, H, W, C]`.
            batch_size: Number of images per call.

        Returns:
            float32 array `[N, classes]`.
        """
        images = np.asarray(images)
        if not len(images):
            return np.zeros((0, self.num_classes), np.float32)
        return batched_outputs(self.logits, images, batch_size)


    def name_of(self, label):
        """The name of class `label`: its recorded name, else the number."""
        return str(label) if self.class_names is None else self.class_names[label]


def contract_outputs(logits, class_names=None):
    """The serving contract's output dict for float32 `logits`, with
    `class_names` when the names are given."""
    classes = tf.argmax(logits, axis=-1, output_type=tf.int64)
    outputs = {"logits": logits, "probabilities": tf.nn.softmax(logits), "classes": classes}
    if class_names is not None:
        outputs["class_names"] = tf.gather(tf.constant(list(class_names)), classes)
    return outputs


def batched_outputs(fn, images, batch_size=1024):
    """Apply `fn` batch by batch and concatenate its outputs as numpy.

    Args:
        fn: Callable mapping a uint8 image tensor to a tensor or a dict of
            tensors.
        images: uint8 array `[N, H, W, C]`, N > 0.
        batch_size: Number of images per call.

    Returns:
        The concatenated outputs, with the structure of one output of `fn`.
    """
    results = [
        fn(tf.constant(images[start : start + batch_size]))
        for start in range(0, len(images), batch_size)
    ]
    return tf.nest.map_structure(
        lambda *parts: np.concatenate([np.asarray(p) for p in parts]),
        *results,
    )


def short_reason(error):
    """One line naming an exception, for a `UserError` message (without
    TensorFlow's `{{function_node ...}}` prefixes)."""
    reason = type(error).__name__
    text = _TF_NODE_PREFIX.sub("", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines:
        reason = f"{reason}: {lines[0]}"
    if len(reason) > 200:
        reason = reason[:197] + "..."
    return reason


def model_image_shape(model, what, dtypes=("uint8",)):
    """`(H, W, C)` of a Keras model that takes a single 4-D image input.

    Args:
        model: Keras model.
        what: How to name the model in the error message.
        dtypes: The input dtypes accepted.

    Returns:
        Tuple `(H, W, C)`.
    """
    inputs = getattr(model, "inputs", None) or []
    if (
        len(inputs) != 1
        or len(inputs[0].shape) != 4
        or keras.backend.standardize_dtype(inputs[0].dtype) not in dtypes
    ):
        found = [(tuple(x.shape), x.dtype) for x in inputs]
        raise ValueError(
            f"{what} must take a single {'uint8 or float' if len(dtypes) > 1 else 'uint8'} "
            "input [batch, H, W, C]; "
            f"its inputs are {found}"
        )
    return tuple(inputs[0].shape[1:])
