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
has been verified, see `kd_tf.publish`); an existing export is replaced only
when asked to (`overwrite=True`), and then atomically too.
"""

import os
import re

import keras
import numpy as np
import tensorflow as tf

from kd_tf import publish
from kd_tf.errors import UserError

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
ASSETS_EXTRA = "assets.extra"

_VERSION_PATTERN = re.compile(r"[0-9]+")
_TF_NODE_PREFIX = re.compile(r"\{\{[^}]*\}\}")


def next_version_dir(saved_models_dir, stage):
    """Return the next free TF Serving version directory of a stage.

    Args:
        saved_models_dir: Root directory of all exports.
        stage: Name of the stage (e.g. `"teacher"`); exports of a stage live
            in `<saved_models_dir>/<stage>/<N>`.

    Returns:
        `"<saved_models_dir>/<stage>/<N>"`, where `N` is one more than the
        largest integer name in the stage directory (names that are not
        integers are ignored), or 1 if there is none. The directory is not
        created.
    """
    stage_dir = os.path.join(saved_models_dir, stage)
    versions = []
    if os.path.isdir(stage_dir):
        versions = [int(name) for name in os.listdir(stage_dir) if _VERSION_PATTERN.fullmatch(name)]
    return os.path.join(stage_dir, str(max(versions, default=0) + 1))


def resolve_export_dir(export_dir, saved_models_dir, stage, overwrite=False):
    """Pick the directory an export will be written to.

    Call it before training, so that an unusable `export_dir` is reported
    before any work is done.

    Args:
        export_dir: Directory requested by the user, or `None` to use the
            next version directory of `stage`.
        saved_models_dir: Root directory of all exports.
        stage: Name of the stage, see `next_version_dir()`.
        overwrite: Whether an earlier export at `export_dir` may be
            replaced.

    Returns:
        `export_dir` if given, else `next_version_dir(saved_models_dir,
        stage)`.

    Raises:
        UserError: `export_dir` already exists and is not an empty
            directory, unless `overwrite` is on and it holds an export.
    """
    if export_dir is None:
        return next_version_dir(saved_models_dir, stage)
    publish.check_target(export_dir, overwrite=overwrite)
    return export_dir


def assets_extra_dir(export_dir):
    """Return the `assets.extra` directory of an export, creating it.

    TF Serving ignores `assets.extra`, so it is the place for reports and
    plots that travel with an export.

    Args:
        export_dir: Directory of a SavedModel.

    Returns:
        `"<export_dir>/assets.extra"`.
    """
    path = os.path.join(export_dir, ASSETS_EXTRA)
    os.makedirs(path, exist_ok=True)
    return path


def export_model(model, export_dir, *, check_images, finalize=None, atol=1e-5, overwrite=False):
    """Write `model` as a verified SavedModel, atomically.

    The SavedModel is written into a temporary sibling of `export_dir`
    (`.<basename>.tmp-<pid>-<random>`), reloaded from disk and compared with
    the in-memory model on `check_images`, handed to `finalize`, and only
    then moved to `export_dir` (see `kd_tf.publish`). On any failure the
    temporary directory is removed and the exception is re-raised, so no
    partial export is left behind and an earlier export stays as it was.

    Args:
        model: Keras model taking uint8 images `[batch, H, W, C]` and
            returning logits `[batch, classes]`.
        export_dir: Directory to create. It must not exist or be empty; its
            parents are created.
        check_images: uint8 array `[batch, H, W, C]` on which the reloaded
            export must reproduce the model's logits.
        finalize: Optional callable `finalize(tmp_dir, served)` run after the
            check and before the rename, where `tmp_dir` is the temporary
            export directory (write extra files there, e.g. into
            `assets_extra_dir(tmp_dir)`) and `served` is the reloaded
            `ServingModel` (its `path` is `tmp_dir`).
        atol: Largest absolute difference allowed between the logits of the
            reloaded export and those of `model`.
        overwrite: Whether to replace an earlier export at `export_dir`;
            it stays in place until the new export is complete.

    Returns:
        `export_dir`.

    Raises:
        UserError: `export_dir` already exists and is not an empty
            directory, unless `overwrite` is on and it holds an export; or
            the disk is full or not writable.
        RuntimeError: The reloaded export does not reproduce the model.
        ValueError: `model` does not take a single uint8 input
            `[batch, H, W, C]`, or `check_images` is not a non-empty uint8
            array of that rank.
    """
    image_shape = _model_image_shape(model, "model")
    check_images = np.asarray(check_images)
    if check_images.dtype != np.uint8 or check_images.ndim != 4 or len(check_images) == 0:
        raise ValueError(
            "`check_images` must be a non-empty uint8 array [batch, H, W, C]. "
            f"Received dtype={check_images.dtype}, "
            f"shape={check_images.shape}."
        )
    with publish.staged(export_dir, overwrite=overwrite) as tmp_dir:
        try:
            _write_saved_model(model, image_shape, tmp_dir)
        except (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError) as e:
            raise publish.storage_error(export_dir, _short_reason(e)) from e
        try:
            served = load_serving_model(tmp_dir)
        except UserError as e:
            raise RuntimeError(f"the export written to {tmp_dir} does not load: {e}") from e
        _check_export(model, served, check_images, atol)
        if finalize is not None:
            finalize(tmp_dir, served)
    return export_dir


class ServingModel:
    """A model loaded from disk that follows the serving contract.

    Build it with `load_serving_model()`.

    Attributes:
        image_shape: `(H, W, C)` of the input images, as declared by the
            model (`None` for a dimension it leaves open).
        num_classes: Number of classes (last dimension of the logits).
        path: Path the model was loaded from.
    """

    def __init__(self, path, serving_fn, image_shape, num_classes, resource):
        """Wrap a loaded model.

        Args:
            path: Path the model was loaded from.
            serving_fn: Callable mapping a uint8 image tensor to a dict that
                holds at least `"logits"`.
            image_shape: `(H, W, C)` of the input images.
            num_classes: Number of classes.
            resource: The loaded object `serving_fn` belongs to; it is kept
                alive for as long as this `ServingModel`.
        """
        self.path = path
        self.image_shape = image_shape
        self.num_classes = num_classes
        self._serving_fn = serving_fn
        self._resource = resource

    def outputs(self, images):
        """Run the model and return all its outputs.

        Works eagerly and inside a `tf.function`.

        Args:
            images: uint8 tensor or array `[batch, H, W, C]`.

        Returns:
            Dict of tensors with at least `"logits"` (float32
            `[batch, classes]`); for a contract-following model also
            `"probabilities"` and `"classes"`.
        """
        images = tf.convert_to_tensor(images)
        if images.dtype != tf.uint8:
            raise TypeError(f"{self.path} takes uint8 images; received {images.dtype.name}")
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
        return _batched_outputs(self.logits, images, batch_size)


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
            f"could not load {path} ({_short_reason(e)}): re-export it or pass another export"
        ) from e
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

    def serving_fn(images):
        return signature(**{INPUT_NAME: images})

    num_classes = _num_classes(path, outputs["logits"].shape, serving_fn, image_shape)
    return ServingModel(path, serving_fn, image_shape, num_classes, loaded)


def _short_reason(error):
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


def _model_image_shape(model, what):
    """`(H, W, C)` of a Keras model that takes a single uint8 4-D input.

    Args:
        model: Keras model.
        what: How to name the model in the error message.

    Returns:
        Tuple `(H, W, C)`.
    """
    inputs = getattr(model, "inputs", None) or []
    if (
        len(inputs) != 1
        or len(inputs[0].shape) != 4
        or keras.backend.standardize_dtype(inputs[0].dtype) != "uint8"
    ):
        found = [(tuple(x.shape), x.dtype) for x in inputs]
        raise ValueError(
            f"{what} must take a single uint8 input [batch, H, W, C]; its inputs are {found}"
        )
    return tuple(inputs[0].shape[1:])


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
            f"could not load {path} with safe_mode=True ({_short_reason(e)}): re-save it "
            "without Lambda layers or custom objects, or pass another model"
        ) from e
    try:
        image_shape = _model_image_shape(model, path)
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
        return _contract_outputs(logits)

    num_classes = _num_classes(path, tf.TensorShape(outputs[0].shape), serving_fn, image_shape)
    return ServingModel(path, serving_fn, image_shape, num_classes, model)


def _contract_outputs(logits):
    """The serving contract's output dict for float32 `logits`."""
    return {
        "logits": logits,
        "probabilities": tf.nn.softmax(logits),
        "classes": tf.argmax(logits, axis=-1, output_type=tf.int64),
    }


def _write_saved_model(model, image_shape, export_dir):
    """Write `model` as a contract-following SavedModel into `export_dir`.

    Args:
        model: Keras model taking uint8 images and returning logits.
        image_shape: `(H, W, C)` of the input images.
        export_dir: Directory to write (empty or missing).
    """
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        logits = tf.cast(model(images, training=False), tf.float32)
        return _contract_outputs(logits)

    archive.add_endpoint(
        SIGNATURE_KEY,
        serve,
        input_signature=[tf.TensorSpec((None,) + image_shape, tf.uint8, name=INPUT_NAME)],
    )
    archive.write_out(export_dir, verbose=False)


def _batched_outputs(fn, images, batch_size=1024):
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


def _check_export(model, served, check_images, atol):
    """Raise `RuntimeError` unless `served` reproduces `model`.

    Args:
        model: The in-memory Keras model.
        served: `ServingModel` of the export reloaded from disk.
        check_images: uint8 array `[N, H, W, C]`.
        atol: Largest absolute difference allowed between the logits.
    """
    expected = _batched_outputs(
        lambda x: tf.cast(model(x, training=False), tf.float32), check_images
    )
    if not np.all(np.isfinite(expected)):
        raise RuntimeError(
            "the model produces non-finite logits on the check images; refusing to export it"
        )
    got = _batched_outputs(served.outputs, check_images)
    missing = {"logits", "probabilities", "classes"} - set(got)
    if missing:
        raise RuntimeError(f"the reloaded export lacks the outputs {sorted(missing)}")
    logits = got["logits"]
    if logits.shape != expected.shape:
        raise RuntimeError(
            f"the reloaded export returns logits of shape {logits.shape}, the "
            f"model {expected.shape}"
        )
    error = float(np.max(np.abs(logits.astype(np.float64) - expected)))
    if not error <= atol:
        raise RuntimeError(
            f"the reloaded export's logits differ from the model's by up to "
            f"{error:.3g} (atol={atol:g})"
        )
    softmax = tf.nn.softmax(logits).numpy()
    if got["probabilities"].dtype != np.float32 or not np.allclose(
        got["probabilities"], softmax, rtol=0, atol=1e-6
    ):
        raise RuntimeError("the reloaded export's probabilities are not the softmax of its logits")
    if got["classes"].dtype != np.int64 or not np.array_equal(
        got["classes"], np.argmax(logits, axis=-1)
    ):
        raise RuntimeError("the reloaded export's classes are not the int64 argmax of its logits")
