"""Loading any model that follows the serving contract: a SavedModel or a `.keras` file."""

import os

import keras
import tensorflow as tf

from kd_tf.errors import UserError
from kd_tf.export.contract import (
    INPUT_NAME,
    SIGNATURE_KEY,
    ServingModel,
    contract_outputs,
    model_image_shape,
    short_reason,
)


def load_serving_model(path):
    """Load a model that follows the serving contract.

    Args:
        path: A SavedModel directory whose `serving_default` signature takes
            uint8 `images` `[batch, H, W, C]` and returns a dict with
            `logits` (exported by kd_tf or by anything else), or a `.keras`
            file of a model that takes uint8 `[batch, H, W, C]` images and
            returns logits (loaded with `safe_mode=True`).

    Returns:
        A `ServingModel`.

    Raises:
        UserError: `path` is missing, cannot be loaded, or does not follow
            the serving contract.
    """
    if not os.path.exists(path):
        raise UserError(f"{path} does not exist: pass a SavedModel directory or a .keras file")
    if os.path.isfile(path):
        if path.endswith(".keras"):
            return _load_keras_file(path)
        raise UserError(
            f"{path} is neither a SavedModel directory nor a .keras file: "
            "pass the directory of an export"
        )
    if not tf.saved_model.contains_saved_model(path):
        raise UserError(
            f"{path} holds no saved_model.pb: pass the directory of an "
            "export (e.g. saved_models/<stage>/<N>)"
        )
    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:
        raise UserError(
            f"could not load {path} ({short_reason(e)}): re-export it or pass another export"
        ) from e
    signature, image_shape, logits_shape = _serving_signature(path, loaded)

    def serving_fn(images):
        return signature(**{INPUT_NAME: images})

    num_classes = _num_classes(path, logits_shape, serving_fn, image_shape)
    return ServingModel(path, serving_fn, image_shape, num_classes, loaded)


def _serving_signature(path, loaded):
    """Check the `serving_default` signature of a loaded SavedModel.

    Args:
        path: Path the SavedModel was loaded from, for error messages.
        loaded: What `tf.saved_model.load(path)` returned.

    Returns:
        A tuple `(signature, image_shape, logits_shape)`: the signature's
        concrete function, `(H, W, C)` of its `images` input and the static
        shape of its `logits` output.

    Raises:
        UserError: The signature is missing, does not take one uint8
            `images` input `[batch, H, W, C]`, or has no `logits` output.
    """
    signatures = getattr(loaded, "signatures", {})
    if SIGNATURE_KEY not in signatures:
        raise UserError(
            f"{path} has no '{SIGNATURE_KEY}' signature (it has "
            f"{sorted(signatures.keys())}): re-export it with kd_tf"
        )
    signature = signatures[SIGNATURE_KEY]
    args, kwargs = signature.structured_input_signature
    spec = kwargs.get(INPUT_NAME)
    if args or len(kwargs) != 1 or spec is None or spec.dtype != tf.uint8 or spec.shape.rank != 4:
        found = ", ".join(f"{name}: {s.dtype.name}{s.shape}" for name, s in kwargs.items())
        raise UserError(
            f"the '{SIGNATURE_KEY}' signature of {path} must take one uint8 "
            f"input '{INPUT_NAME}' [batch, H, W, C], it takes ({found}): "
            "re-export it with kd_tf"
        )
    outputs = signature.structured_outputs
    if not isinstance(outputs, dict) or "logits" not in outputs:
        raise UserError(
            f"the '{SIGNATURE_KEY}' signature of {path} has no 'logits' "
            "output: re-export it with kd_tf"
        )
    image_shape = tuple(spec.shape.as_list()[1:])
    return signature, image_shape, outputs["logits"].shape


def _num_classes(path, logits_shape, serving_fn, image_shape):
    """Number of classes, from a static logits shape or from one call.

    Args:
        path: Path the model was loaded from, for error messages.
        logits_shape: Static shape of the logits output.
        serving_fn: Callable mapping uint8 images to a dict with `"logits"`.
        image_shape: `(H, W, C)` of the input images.

    Returns:
        The number of classes.
    """
    if logits_shape.rank is not None and logits_shape.rank != 2:
        raise UserError(
            f"the logits of {path} have shape {logits_shape}, expected "
            "[batch, classes]: re-export it with kd_tf"
        )
    if logits_shape.rank == 2 and logits_shape[-1] is not None:
        return int(logits_shape[-1])
    if None in image_shape:
        raise UserError(
            f"cannot tell the number of classes of {path}: it declares "
            f"neither the logits width nor the image shape {image_shape}; "
            "re-export it with static shapes"
        )
    probe = tf.zeros((1,) + image_shape, tf.uint8)
    return int(serving_fn(probe)["logits"].shape[-1])


def _load_keras_file(path):
    """Wrap a `.keras` file as a `ServingModel`."""
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as e:
        raise UserError(
            f"could not load {path} with safe_mode=True ({short_reason(e)}): re-save it "
            "without Lambda layers or custom objects, or pass another model"
        ) from e
    try:
        image_shape = model_image_shape(model, path)
    except ValueError as e:
        raise UserError(f"{e}: re-save it with a uint8 image input") from e
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1:
        raise UserError(
            f"{path} must have a single logits output [batch, classes], it "
            f"has {len(outputs)} outputs: re-save it"
        )

    def serving_fn(images):
        logits = tf.cast(model(images, training=False), tf.float32)
        return contract_outputs(logits)

    num_classes = _num_classes(path, tf.TensorShape(outputs[0].shape), serving_fn, image_shape)
    return ServingModel(path, serving_fn, image_shape, num_classes, model)
