"""TFLite: converting an export and measuring it against the SavedModel.

`convert` turns a SavedModel that follows the serving contract into a
`.tflite` flat buffer (TensorFlow's `tf.lite.TFLiteConverter`) whose
`serving_default` signature keeps the uint8 `images` input and the `logits`,
`probabilities`, `classes` and `class_names` outputs. `tflite_logits` runs it
in LiteRT's interpreter (the `ai-edge-litert` package, the successor of the
deprecated `tf.lite.Interpreter`), and `export_tflite` writes the file, its
class names beside it (`labels_path`: one a line, in class order, as the
SavedModel's `assets/labels.txt`) and a report comparing test accuracy and
size with the SavedModel's. The output paths are checked before converting;
the files are created exclusively, never in place of a file that appeared
meanwhile.

Quantisation (`QUANTIZATIONS`):

- `none`: float32 weights and activations.
- `dynamic`: int8 weights, float activations (dynamic-range quantisation).
- `int8`: int8 weights and activations, calibrated on a representative
  data set of `REPRESENTATIVE_EXAMPLES` training images; the uint8 input and
  the float outputs stay as they are, and an op without an int8 kernel
  falls back to float.

Usage:

```python
content = lite.convert("saved_models/student/1", "int8", splits.train.head(500))
logits = lite.tflite_logits(content, splits.test.head(1000))
```
"""

import os
import pathlib

import numpy as np
import tensorflow as tf
from absl import logging
from ai_edge_litert.interpreter import Interpreter

from kd_tf import atomic, choices, export, interrupts, progress, reporting, training
from kd_tf.errors import ConfigError

QUANTIZATIONS = choices.QUANTIZATIONS
_DESCRIPTIONS = {"none": "float32", "dynamic": "dynamic-range int8", "int8": "int8"}
# Largest accuracy drop, in points, that each conversion is meant to stay within.
PARITY_POINTS = {"none": 0.1, "dynamic": 0.5, "int8": 0.5}
REPRESENTATIVE_EXAMPLES = choices.REPRESENTATIVE_EXAMPLES
_EXTRA_ASSETS = "assets.extra"


def convert(model_dir, quantize="none", representative_images=None):
    """Convert a SavedModel's `serving_default` signature to TFLite.

    Args:
        model_dir: SavedModel directory following the serving contract.
        quantize: One of `QUANTIZATIONS`.
        representative_images: uint8 array `[N, H, W, C]`, required for
            `int8`: the images the activation ranges are calibrated on.

    Returns:
        The `.tflite` flat buffer, as bytes.
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, received {quantize!r}")
    if quantize == "int8" and (representative_images is None or not len(representative_images)):
        raise ValueError("quantize='int8' needs representative_images")
    converter = tf.lite.TFLiteConverter.from_saved_model(
        model_dir, signature_keys=[export.SIGNATURE_KEY]
    )
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":

        def representative_dataset():
            with progress.Progress("int8 calibration", len(representative_images)) as shown:
                for image in representative_images:
                    yield {export.INPUT_NAME: image[np.newaxis]}
                    shown.add()

        converter.representative_dataset = representative_dataset
    return converter.convert()


def tflite_logits(model_content, images, batch_size=1024):
    """Run a converted model in LiteRT's interpreter.

    Args:
        model_content: `.tflite` flat buffer, as from `convert`.
        images: uint8 array `[N, H, W, C]`, N > 0.
        batch_size: Images per interpreter call.

    Returns:
        float32 array `[N, classes]` of logits.
    """
    runner = Interpreter(model_content=model_content).get_signature_runner(export.SIGNATURE_KEY)
    return np.concatenate(
        [
            runner(**{export.INPUT_NAME: images[start : start + batch_size]})["logits"]
            for start in range(0, len(images), batch_size)
        ]
    ).astype(np.float32)


def saved_model_bytes(model_dir):
    """Size of a SavedModel on disk: every file except `assets.extra/`
    (kd_tf's report and figures, which serving does not read)."""
    total = 0
    for root, dirs, names in os.walk(model_dir):
        if root == model_dir and _EXTRA_ASSETS in dirs:
            dirs.remove(_EXTRA_ASSETS)
        total += sum(os.path.getsize(os.path.join(root, name)) for name in names)
    return total


def _human_size(size):
    return f"{size / 2**20:.2f} MB" if size >= 2**20 else f"{size / 2**10:.1f} KB"


def report_path(tflite_path):
    """Where `export_tflite` writes its report: `<tflite_path>.json`."""
    return tflite_path + ".json"


def labels_path(tflite_path):
    """Where `export_tflite` writes the class names: `<tflite_path>.labels.txt`."""
    return tflite_path + ".labels.txt"


def pick_representative_images(train, seed=0):
    """`REPRESENTATIVE_EXAMPLES` training images drawn without replacement
    (all of them if there are fewer), for int8 calibration."""
    count = min(REPRESENTATIVE_EXAMPLES, len(train))
    picked = np.random.default_rng(seed).choice(len(train), size=count, replace=False)
    return train.take(np.sort(picked))


def export_tflite(served, tflite_path, quantize, splits, *, seed=0, batch_size=1024):
    """Convert, measure on the test split and write `.tflite` and its report.

    Args:
        served: `kd_tf.export.ServingModel` of a SavedModel directory.
        tflite_path: Where to write the `.tflite` file (must not exist yet);
            the report goes to `report_path(tflite_path)`.
        quantize: One of `QUANTIZATIONS`.
        splits: `kd_tf.data.DataSplits`; the test split is measured through
            both models, int8 calibrates on `pick_representative_images(train)`.
        seed: Seed of the choice of the representative images.
        batch_size: Images per call of either model.

    Returns:
        The report: `model_dir`, `tflite_path`, `labels_path`, `quantize`, `test_examples`,
        `saved_model` and `tflite` (each `bytes` and `test_accuracy`),
        `accuracy_drop_points`, `parity_points`, `within_parity`,
        `same_class_fraction` and `representative_examples`.

    Raises:
        ConfigError: `served` is not a SavedModel directory, or `tflite_path`
            or its report exists already (or appears while converting), or
            cannot be written (its directory is created if missing).
    """
    _check_paths(served, tflite_path)
    representative = pick_representative_images(splits.train, seed) if quantize == "int8" else None
    with interrupts.outcome(f"{tflite_path} was not written"):
        content = convert(served.path, quantize, representative)
        report = _measure(served, content, splits.test, batch_size, quantize)
        report.update(
            tflite_path=tflite_path,
            labels_path=labels_path(tflite_path),
            representative_examples=0 if representative is None else len(representative),
        )
        _write_new(tflite_path, lambda temporary: pathlib.Path(temporary).write_bytes(content))
    names = "".join(f"{name}\n" for name in served.class_names or splits.class_names)
    with interrupts.outcome(f"{tflite_path} is complete, its labels and report were not written"):
        _write_new(
            labels_path(tflite_path),
            lambda temporary: pathlib.Path(temporary).write_text(names, encoding="utf-8"),
        )
    written = f"{tflite_path} and its labels are complete, its report was not written"
    with interrupts.outcome(written):
        _write_new(
            report_path(tflite_path), lambda temporary: reporting.write_json(report, temporary)
        )
    _log(report)
    return report


def _write_new(path, write):
    """`atomic.write_file` that never replaces a file."""
    try:
        atomic.write_file(path, write, exclusive=True)
    except FileExistsError:
        raise _exists(path) from None


def _exists(path):
    return ConfigError(("tflite_path",), f"{path} already exists: pass another {{0}} or remove it")


def _check_paths(served, tflite_path):
    for path in (tflite_path, labels_path(tflite_path), report_path(tflite_path)):
        if os.path.lexists(path):
            raise _exists(path)
    if not os.path.isdir(served.path):
        raise ConfigError(
            ("stage",),
            f"{{0}}=tflite converts SavedModel directories, not {served.path}: "
            "pass the directory of an export",
        )
    atomic.check_writable(tflite_path, "tflite_path")


def _measure(served, content, test, batch_size, quantize):
    """Test accuracy and size of the SavedModel and of its conversion `content`,
    and whether the drop stays within `PARITY_POINTS[quantize]`."""
    saved_logits = test.map_batches(served.logits, batch_size, "the SavedModel on the test split")
    lite_logits = test.map_batches(
        lambda images: tf.constant(tflite_logits(content, images.numpy())), batch_size,
        "TFLite on the test split",
    )
    saved_accuracy = training.evaluate_logits(saved_logits, test.labels)["accuracy"]
    lite_accuracy = training.evaluate_logits(lite_logits, test.labels)["accuracy"]
    drop = 100 * (saved_accuracy - lite_accuracy)
    return {
        "model_dir": served.path,
        "test_examples": len(test),
        "saved_model": {"bytes": saved_model_bytes(served.path), "test_accuracy": saved_accuracy},
        "tflite": {"bytes": len(content), "test_accuracy": lite_accuracy},
        "accuracy_drop_points": round(drop, 4),
        "quantize": quantize,
        "parity_points": PARITY_POINTS[quantize],
        "within_parity": drop <= PARITY_POINTS[quantize],
        "same_class_fraction": float(
            np.mean(np.argmax(saved_logits, 1) == np.argmax(lite_logits, 1))
        ),
    }


def _log(report):
    """Logs the comparison table, and a warning when the drop passes the parity target."""
    quantize = report["quantize"]
    table = reporting.markdown_table(
        [
            {
                "model": "SavedModel",
                "size": _human_size(report["saved_model"]["bytes"]),
                "test_accuracy": report["saved_model"]["test_accuracy"],
            },
            {
                "model": f"TFLite {_DESCRIPTIONS[quantize]}",
                "size": _human_size(report["tflite"]["bytes"]),
                "test_accuracy": report["tflite"]["test_accuracy"],
            },
        ]
    )
    path = report["tflite_path"]
    logging.info("%s written (report %s)\n%s", path, report_path(path), table)
    if not report["within_parity"]:
        logging.warning(
            "TFLite (%s) is %.2f points below the SavedModel, more than the %.1f targeted",
            quantize,
            report["accuracy_drop_points"],
            PARITY_POINTS[quantize],
        )
