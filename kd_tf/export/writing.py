"""Writing an export: a SavedModel, verified after reloading, moved into place atomically."""

import functools
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from kd_tf import atomic, preprocessing
from kd_tf.errors import UserError
from kd_tf.export.contract import (
    ARCHITECTURE,
    IMAGE_BYTES_NAME,
    IMAGES_SIGNATURE_KEY,
    INPUT_NAME,
    LABELS_FILE,
    SIGNATURE_KEY,
    batched_outputs,
    contract_outputs,
    model_image_shape,
    short_reason,
)
from kd_tf.export.loading import load_serving_model
from kd_tf.export.versions import assets_extra_dir


def export_model(
    model, export_dir, *, check_images, class_names=None, recorded=None, finalize=None,
    atol=1e-5, overwrite=False, on_taken=None,
):
    """Write `model` as a verified SavedModel, atomically.

    The SavedModel is written into a temporary sibling of `export_dir`
    (`.<basename>.tmp-<pid>-<random>`), reloaded from disk and compared with
    the in-memory model on `check_images`, handed to `finalize`, and only
    then moved to `export_dir` (see `kd_tf.atomic`), with a functional
    model's architecture in `assets.extra/architecture.json` for hints
    (`loading.keras_model_of`). On any failure the staging directory is
    removed and the exception re-raised: an earlier export stays as it was.

    Args:
        model: Keras model taking uint8 images `[batch, H, W, C]` and
            returning logits `[batch, classes]`.
        export_dir: Directory to create. It must not exist or be empty; its
            parents are created.
        check_images: uint8 array `[batch, H, W, C]` on which the reloaded
            export must reproduce the model's logits.
        class_names: The name of each class, in class order; None: `"0"`, ...
        recorded: The `preprocessing.Preprocessing` of `serving_images`
            (the training data's); None: no background known, no inversion.
        finalize: Optional `finalize(tmp_dir, served)` run after the check
            and before the rename: `tmp_dir` is the temporary export
            directory (write extra files into `assets_extra_dir(tmp_dir)`),
            `served` the reloaded `ServingModel` (its `path` is `tmp_dir`).
        atol: Largest difference allowed between the reloaded logits and `model`'s.
        overwrite: Whether to replace an earlier export at `export_dir`
            (it stays in place until the new export is complete).
        on_taken: `on_taken(path) -> another path` for a version directory
            another run may take meanwhile (`NextVersion.taken`).

    Returns:
        Where the export is: `export_dir`, or the path `on_taken` gave last.

    Raises:
        UserError: `export_dir` is not empty (and not an export replaced
            with `overwrite`), or the disk is full or not writable.
        RuntimeError: The reloaded export does not reproduce the model.
        ValueError: `model` does not take one uint8 input `[batch, H, W, C]`,
            or `check_images` is not a non-empty uint8 array of that shape.
    """
    image_shape = model_image_shape(model, "model")
    class_names, check_images = _checked_names(model, class_names), _checked_images(check_images)
    recorded = recorded or preprocessing.Preprocessing(image_shape)
    placed = [export_dir]

    def taken(path):
        placed.append(on_taken(path))
        return placed[-1]

    with atomic.staged(export_dir, overwrite=overwrite, on_taken=on_taken and taken) as tmp_dir:
        served = _written(model, image_shape, (tmp_dir, export_dir), class_names, recorded)
        _check_export(model, served, check_images, atol)
        _check_names(served, class_names, check_images)
        if finalize is not None:
            finalize(tmp_dir, served)
    return placed[-1]


def _written(model, image_shape, directories, class_names, recorded):
    """Writes the SavedModel and the architecture into the staging
    directory of `directories` (`(staging, export_dir)`) and reloads it, as a
    `ServingModel`."""
    tmp_dir, export_dir = directories
    try:
        _write_saved_model(model, image_shape, tmp_dir, class_names, recorded)
    except (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError) as e:
        raise atomic.storage_error(export_dir, short_reason(e)) from e
    try:
        _write_architecture(model, tmp_dir)
    except OSError as e:
        raise atomic.storage_error(export_dir, e.strerror) from e
    try:
        return load_serving_model(tmp_dir)
    except UserError as e:
        raise RuntimeError(f"the export written to {tmp_dir} does not load: {e}") from e


def _write_architecture(model, export_dir):
    """Writes `model.to_json()` into the export's `assets.extra` (not for a
    subclassed model, which has no such description)."""
    try:
        architecture = model.to_json()
    except NotImplementedError:
        return
    with open(os.path.join(assets_extra_dir(export_dir), ARCHITECTURE), "w") as f:
        f.write(architecture)


def _checked_images(check_images):
    """`check_images` as an array; raises `ValueError` unless it is a
    non-empty uint8 array `[batch, H, W, C]`."""
    check_images = np.asarray(check_images)
    if check_images.dtype != np.uint8 or check_images.ndim != 4 or len(check_images) == 0:
        raise ValueError(
            "`check_images` must be a non-empty uint8 array [batch, H, W, C]. "
            f"Received dtype={check_images.dtype}, shape={check_images.shape}."
        )
    return check_images


def _checked_names(model, class_names):
    """`class_names` as a tuple of one name per class of `model` (the class
    numbers when None); raises `ValueError` when the count differs."""
    classes = int(model.outputs[0].shape[-1])
    if class_names is None:
        return tuple(str(label) for label in range(classes))
    if len(class_names) != classes:
        raise ValueError(f"the model has {classes} classes, but {len(class_names)} names")
    return tuple(class_names)


def _write_saved_model(model, image_shape, export_dir, class_names, recorded):
    """Write `model` as a contract-following SavedModel into `export_dir`.

    Args:
        model: Keras model taking uint8 images and returning logits.
        image_shape: `(H, W, C)` of the input images.
        export_dir: Directory to write (empty or missing).
        class_names: The name of each class.
        recorded: The `preprocessing.Preprocessing` of `serving_images`,
            which a model of images of a fixed H x W with 1 or 3 channels has.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        logits = tf.cast(model(images, training=False), tf.float32)
        return contract_outputs(logits, class_names)

    serving = archive.add_endpoint(
        SIGNATURE_KEY,
        serve,
        input_signature=[tf.TensorSpec((None,) + image_shape, tf.uint8, name=INPUT_NAME)],
    )
    if preprocessing.takes_image_files(image_shape):
        prepare_files = _file_preparation(image_shape, recorded)
        archive.add_endpoint(
            IMAGES_SIGNATURE_KEY,
            lambda image_bytes: serving(prepare_files(image_bytes)),
            input_signature=[tf.TensorSpec((None,), tf.string, name=IMAGE_BYTES_NAME)],
        )
    with tempfile.TemporaryDirectory() as labels_dir:
        archive.track(_labels_table(os.path.join(labels_dir, LABELS_FILE), class_names))
        archive.write_out(export_dir, verbose=False)


@functools.lru_cache(maxsize=16)
def _file_preparation(image_shape, recorded):
    """Image files (a string batch) decoded and prepared as `recorded` says
    (`preprocessing.prepare_file`) into uint8 images `image_shape`, as a
    concrete function: `serving_images` runs it before the model.

    Traced once per process and preprocessing: the decoding is the costly
    part of an export's tracing, the same for every model (compare and tune
    export several), and `write_out` traces each endpoint twice."""
    return tf.function(
        lambda image_bytes: tf.map_fn(
            lambda encoded: preprocessing.prepare_file(encoded, recorded)[0],
            image_bytes,
            fn_output_signature=tf.TensorSpec(image_shape, tf.uint8),
        ),
        autograph=False,
    ).get_concrete_function(tf.TensorSpec((None,), tf.string))


def _labels_table(path, class_names):
    """A lookup table (class -> name) read from `path`, written with
    `class_names` one a line: SavedModel copies the file of a tracked table
    into the export's `assets/` (the signatures name classes with constants,
    which TFLite converts)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\n" for name in class_names))
    initializer = tf.lookup.TextFileInitializer(
        path,
        tf.int64,
        tf.lookup.TextFileIndex.LINE_NUMBER,
        tf.string,
        tf.lookup.TextFileIndex.WHOLE_LINE,
    )
    return tf.lookup.StaticHashTable(initializer, default_value="")


def _check_export(model, served, check_images, atol):
    """Raise `RuntimeError` unless `served` reproduces `model`.

    Args:
        model: The in-memory Keras model.
        served: `ServingModel` of the export reloaded from disk.
        check_images: uint8 array `[N, H, W, C]`.
        atol: Largest absolute difference allowed between the logits.
    """
    expected = batched_outputs(
        lambda x: tf.cast(model(x, training=False), tf.float32), check_images
    )
    if not np.all(np.isfinite(expected)):
        raise RuntimeError(
            "the model produces non-finite logits on the check images; refusing to export it"
        )
    got = batched_outputs(served.outputs, check_images)
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


def _check_names(served, class_names, check_images):
    """Raise `RuntimeError` unless the reloaded export names its classes
    `class_names`, in its labels file and in its `class_names` output."""
    if served.class_names != class_names:
        raise RuntimeError(
            f"the reloaded export's {LABELS_FILE} names {served.class_names}, not {class_names}"
        )
    got = served.outputs(check_images[:1])
    name = got["class_names"].numpy()[0].decode("utf-8")
    if name != class_names[int(got["classes"].numpy()[0])]:
        raise RuntimeError(f"the reloaded export's class_names output {name!r} is not its class's")
