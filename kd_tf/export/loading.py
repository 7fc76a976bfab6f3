"""Loading any model that follows the serving contract: a SavedModel or a `.keras` file."""

import json
import os

import keras
import tensorflow as tf
from absl import logging

from kd_tf.errors import ConfigError, UserError
from kd_tf.export.contract import (
    ARCHITECTURE,
    ASSETS,
    ASSETS_EXTRA,
    FLOAT_INPUT_DTYPES,
    INPUT_NAME,
    LABELS_FILE,
    SIGNATURE_KEY,
    ServingModel,
    contract_outputs,
    model_image_shape,
    short_reason,
)


def load_serving_model(path, float_input=False):
    """Load a model that follows the serving contract.

    Args:
        path: A SavedModel directory whose `serving_default` signature takes
            uint8 `images` `[batch, H, W, C]` and returns a dict with
            `logits` (exported by kd_tf or by anything else), or a `.keras`
            file of a model that takes uint8 `[batch, H, W, C]` images and
            returns logits (loaded with `safe_mode=True`).
        float_input: Also accept a model whose images are float
            (`FLOAT_INPUT_DTYPES`), as a teacher may be (see `kd_tf.teacher`).

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
            return _load_keras_file(path, _input_dtypes(float_input))
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
    signature, spec, logits_shape = _serving_signature(path, loaded, _input_dtypes(float_input))
    image_shape = tuple(spec.shape.as_list()[1:])

    def serving_fn(images):
        return signature(**{INPUT_NAME: images})

    num_classes = _num_classes(path, logits_shape, serving_fn, image_shape, spec.dtype)
    names = recorded_class_names(path, num_classes)
    return ServingModel(path, serving_fn, image_shape, num_classes, loaded, spec.dtype, names)


def recorded_class_names(path, num_classes):
    """The class names of the SavedModel at `path`, one a line of its
    `assets/labels.txt`; None when it has no such file or the file does not
    name `num_classes` classes (logged).

    Usage: `recorded_class_names("saved_models/teacher/1", 10)` is `("0", ..., "9")`.
    """
    labels = os.path.join(path, ASSETS, LABELS_FILE)
    try:
        with open(labels, encoding="utf-8") as f:
            names = tuple(f.read().splitlines())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        logging.warning("cannot read the class names of %s (%s): using class numbers", path, error)
        return None
    if len(names) != num_classes:
        logging.warning(
            "%s names %d classes, but %s predicts %d: using class numbers",
            labels, len(names), path, num_classes,
        )
        return None
    return names


def keras_model_of(served):
    """The Keras model behind `served` (a `ServingModel`), whose layers can
    be read: a `.keras` file's model, or an export's `ARCHITECTURE` rebuilt
    (with `safe_mode=True`) holding the SavedModel's weights, matched by
    name; None for a SavedModel without one (it exposes its logits only).

    Raises:
        UserError: the architecture does not match the SavedModel's weights.
    """
    if isinstance(served.resource, keras.Model):
        return served.resource
    path = os.path.join(served.path, ASSETS_EXTRA, ARCHITECTURE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            model = keras.saving.deserialize_keras_object(json.load(f), safe_mode=True)
    except Exception as e:
        raise UserError(f"could not rebuild {path} ({short_reason(e)}): re-export it") from e
    saved = {v.name.split(":")[0]: v for v in served.resource.variables}
    for weight in model.weights:
        value = saved.get(weight.path)
        if value is None or tuple(value.shape) != tuple(weight.shape):
            raise UserError(
                f"{path} does not match the weights of {served.path} ({weight.path}): re-export it"
            )
        weight.assign(value)
    return model


def check_fits(model, what, splits):
    """Checks that `model` (a `ServingModel`) takes the data set's images as
    they are and predicts its classes, named as the data names them; `what`
    names it in messages (e.g. "model", given as `--model_dir`: the config
    field `<what>_dir`). A teacher may take other images
    (`kd_tf.teacher_adapter`) and is checked with `check_classes` and
    `check_class_names` only."""
    if tuple(model.image_shape) != tuple(splits.image_shape):
        raise ConfigError(
            (f"{what}_dir",),
            f"{what} {model.path} takes images of shape {tuple(model.image_shape)} "
            f"but {splits.dataset} has {tuple(splits.image_shape)}: use a {what} trained on this "
            "data as {0}",
        )
    check_classes(model, what, splits)
    check_class_names(model, what, splits)


def check_classes(model, what, splits):
    """Checks that `model` predicts the data set's number of classes (`what`
    as in `check_fits`); `check_class_names` checks their names."""
    if model.num_classes != splits.num_classes:
        raise ConfigError(
            (f"{what}_dir",),
            f"{what} {model.path} predicts {model.num_classes} classes but "
            f"{splits.dataset} has {splits.num_classes}: use a {what} trained on this data as {{0}}",
        )


def check_class_names(model, what, splits, class_order=None):
    """Checks that `model` (a `ServingModel` of as many classes as the data)
    names its classes as the data set does, in the same order (read in
    `class_order` when given: `class_order[c]` is its output for the data's
    class c, see `--teacher_class_order`); a model that records no names (a
    foreign one, a `.keras` file) is taken to follow the data's order, which
    is logged. `what` as in `check_fits`.

    Raises:
        ConfigError: the names differ, naming the first difference (and, for
            a teacher whose names are the data's in another order, the
            `--teacher_class_order` that reads them in the data's).
    """
    ours = tuple(splits.class_names)
    if model.class_names is None:
        logging.warning(
            "%s %s records no class names: its classes are taken to be those of %s, in order "
            "(%s)", what, model.path, splits.dataset, _listed(ours),
        )
        return
    theirs = model.class_names
    if class_order is not None:
        theirs = tuple(theirs[output] for output in class_order)
    if theirs == ours:
        return
    index = next(i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b)
    reordered = sorted(theirs) == sorted(ours)
    fields, hint = (f"{what}_dir",), f"use a {what} trained on these classes as {{0}}"
    if reordered and what == "teacher":
        order = ",".join(str(model.class_names.index(name)) for name in ours)
        fields += ("teacher_class_order",)
        hint = f"pass {{1}}={order} to read its outputs in the data's order, or another {{0}}"
    raise ConfigError(
        fields,
        f"{what} {model.path} names its classes {'in another order' if reordered else 'differently'}"
        f" than {splits.dataset}: class {index} is {theirs[index]!r} there, {ours[index]!r} here "
        f"({what}: {_listed(theirs)}; data: {_listed(ours)}): {hint}",
    )


def _listed(names, shown=6):
    """`names` as one short line: the first `shown`, then how many more."""
    text = ", ".join(names[:shown])
    return text if len(names) <= shown else f"{text}, ... ({len(names)} in all)"


def _input_dtypes(float_input):
    return ("uint8", *FLOAT_INPUT_DTYPES) if float_input else ("uint8",)


def _describe(dtypes):
    return "uint8 or float" if len(dtypes) > 1 else "uint8"


def _serving_signature(path, loaded, dtypes):
    """Check the `serving_default` signature of a loaded SavedModel.

    Args:
        path: Path the SavedModel was loaded from, for error messages.
        loaded: What `tf.saved_model.load(path)` returned.
        dtypes: The image dtypes accepted.

    Returns:
        A tuple `(signature, spec, logits_shape)`: the signature's concrete
        function, the `tf.TensorSpec` of its `images` input and the static
        shape of its `logits` output.

    Raises:
        UserError: The signature is missing, does not take one `images`
            input `[batch, H, W, C]` of `dtypes`, or has no `logits` output.
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
    if (
        args
        or len(kwargs) != 1
        or spec is None
        or spec.dtype.name not in dtypes
        or spec.shape.rank != 4
    ):
        found = ", ".join(f"{name}: {s.dtype.name}{s.shape}" for name, s in kwargs.items())
        raise UserError(
            f"the '{SIGNATURE_KEY}' signature of {path} must take one {_describe(dtypes)} "
            f"input '{INPUT_NAME}' [batch, H, W, C], it takes ({found}): "
            "re-export it with kd_tf"
        )
    outputs = signature.structured_outputs
    if not isinstance(outputs, dict) or "logits" not in outputs:
        raise UserError(
            f"the '{SIGNATURE_KEY}' signature of {path} has no 'logits' "
            "output: re-export it with kd_tf"
        )
    return signature, spec, outputs["logits"].shape


def _num_classes(path, logits_shape, serving_fn, image_shape, dtype=tf.uint8):
    """Number of classes, from a static logits shape or from one call.

    Args:
        path: Path the model was loaded from, for error messages.
        logits_shape: Static shape of the logits output.
        serving_fn: Callable mapping images to a dict with `"logits"`.
        image_shape: `(H, W, C)` of the input images.
        dtype: Their dtype.

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
    probe = tf.zeros((1,) + image_shape, dtype)
    return int(serving_fn(probe)["logits"].shape[-1])


def _load_keras_file(path, dtypes):
    """Wrap a `.keras` file taking images of `dtypes` as a `ServingModel`."""
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as e:
        raise UserError(
            f"could not load {path} with safe_mode=True ({short_reason(e)}): re-save it "
            "without Lambda layers or custom objects, or pass another model"
        ) from e
    try:
        image_shape = model_image_shape(model, path, dtypes)
    except ValueError as e:
        raise UserError(f"{e}: re-save it with a uint8 image input") from e
    input_dtype = tf.as_dtype(keras.backend.standardize_dtype(model.inputs[0].dtype))
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1:
        raise UserError(
            f"{path} must have a single logits output [batch, classes], it "
            f"has {len(outputs)} outputs: re-save it"
        )

    def serving_fn(images):
        logits = tf.cast(model(images, training=False), tf.float32)
        return contract_outputs(logits)

    logits_shape = tf.TensorShape(outputs[0].shape)
    num_classes = _num_classes(path, logits_shape, serving_fn, image_shape, input_dtype)
    return ServingModel(path, serving_fn, image_shape, num_classes, model, input_dtype)
