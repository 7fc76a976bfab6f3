"""Predicting with an exported model on image files or test images.

`find_images` expands `--images` into files (the types the directory source
reads: PNG, JPEG, BMP, GIF), `model_preprocessing` reads what the model's
export records of its training images' preprocessing, `load_images` turns
files of any size into the model's uint8 input with exactly that
preprocessing (`kd_tf.preprocessing`: the training pipeline's, which the
export's `serving_images` signature applies too), and `predict` returns each
image's class, by number and name, and top classes, which `format_prediction`
renders as one line (`format_json` as one JSON object).

Images are inverted only for a model of a drawing data set (grayscale,
single-polarity), and only when clearly of the other background; each
inversion is logged. A model without a record (a foreign SavedModel, a
`.keras` file, an export older than the record) gets images resized and
converted to its channels, never inverted.

Usage:

```python
served = export.load_serving_model("saved_models/student/1")
paths = inference.find_images("digits/*.png")
recorded = inference.model_preprocessing("saved_models/student/1", served.image_shape)
images = inference.load_images(paths, recorded)
predictions = inference.predict(served, images)
for path, prediction in zip(paths, predictions):
    print(inference.format_prediction(os.path.basename(path), prediction))
```
"""

import dataclasses
import glob
import json
import os

import numpy as np
import tensorflow as tf
from absl import logging

from kd_tf import atomic, preprocessing, reporting
from kd_tf.data.directory import IMAGE_EXTENSIONS
from kd_tf.errors import ConfigError, UserError
from kd_tf.export import ASSETS_EXTRA

TOP_K = 3
_GLOB_CHARACTERS = "*?["


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The model's answer for one image.

    Arguments:
        label: The predicted class (argmax of the logits).
        name: Its name.
        top: `(class, name, probability)` of the most probable classes,
            most probable first.
        true_label: The known class of the image, or `None`.
        true_name: Its name, or `None`.
    """

    label: int
    name: str
    top: tuple
    true_label: int | None = None
    true_name: str | None = None


def find_images(spec):
    """Expand `--images` into a sorted list of image files.

    Args:
        spec: Comma-separated entries, each a file, a directory (its
            files of `IMAGE_EXTENSIONS`, not recursive) or a glob pattern
            such as `digits/*.png`.

    Returns:
        The files, in the order of the entries, each entry's files sorted,
        without duplicates.

    Raises:
        UserError: An entry names nothing, or no image file is found.
    """
    paths = []
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        if os.path.isdir(entry):
            found = sorted(
                os.path.join(entry, name)
                for name in os.listdir(entry)
                if name.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(entry, name))
            )
        elif any(c in entry for c in _GLOB_CHARACTERS):
            found = sorted(path for path in glob.glob(entry) if os.path.isfile(path))
        elif os.path.isfile(entry):
            found = [entry]
        else:
            raise ConfigError(
                ("images",),
                f"{{0}} entry {entry} does not exist: pass image files, a directory or a glob",
            )
        if not found:
            raise ConfigError(
                ("images",),
                f"{{0}} entry {entry} matches no image file: pass PNG, JPEG, BMP or GIF files "
                f"({', '.join(IMAGE_EXTENSIONS)})",
            )
        paths += [path for path in found if path not in paths]
    if not paths:
        raise ConfigError(("images",), "{0} is empty: pass image files, a directory or a glob")
    return paths


def _check_image_shape(image_shape):
    if not preprocessing.takes_image_files(image_shape):
        raise UserError(
            f"the model takes images of shape {tuple(image_shape)}: image files can only be "
            "converted for a fixed H x W with 1 or 3 channels"
        )


def model_preprocessing(model_dir, image_shape):
    """The preprocessing the report of the export in `model_dir` records
    (`assets.extra/report.json`, see `preprocessing.Preprocessing.from_report`).

    Args:
        model_dir: `--model_dir`: an export directory or a `.keras` file.
        image_shape: the model's `(H, W, C)`, C 1 or 3.

    Returns:
        A `preprocessing.Preprocessing`; without a report (a foreign
        SavedModel, a `.keras` file), one that never inverts, which is logged.

    Raises:
        UserError: the model's input is not a fixed-size 1- or 3-channel
            image, or the record names a method this kd_tf lacks.
    """
    _check_image_shape(image_shape)
    path = os.path.join(model_dir, ASSETS_EXTRA, "report.json")
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        report = None
    recorded = preprocessing.Preprocessing.from_report(
        report if isinstance(report, dict) else {}, image_shape
    )
    if recorded.background is None:
        logging.warning(
            "%s has no report recording the preprocessing of its training images (%s): the "
            "images are resized to its input and not inverted",
            model_dir,
            path,
        )
    else:
        logging.info("%s: images are preprocessed as %s", model_dir, recorded)
    return recorded


def load_images(paths, recorded):
    """Read image files as the model's uint8 input (see the module doc),
    logging each one inverted.

    Args:
        paths: PNG, JPEG, BMP or GIF files of any size, grayscale or colour.
        recorded: the model's `preprocessing.Preprocessing`.

    Returns:
        uint8 array `[len(paths), H, W, C]`.

    Raises:
        UserError: A file cannot be decoded.
    """
    images = []
    for path in paths:
        try:
            image, inverted = preprocessing.prepare_file(tf.io.read_file(path), recorded)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
            raise UserError(
                f"cannot read {path} as an image ({e.message.splitlines()[0]}): "
                "pass PNG, JPEG, BMP or GIF files"
            ) from e
        if inverted:
            logging.info(
                "%s: inverted, its background is clearly unlike the training images' (%s)",
                path, recorded.background,
            )
        images.append(image.numpy())
    return np.stack(images)


def predict(served, images, labels=None, batch_size=1024):
    """Classify images with a loaded model.

    Args:
        served: A `kd_tf.export.ServingModel`; its `class_names` name the
            classes (the class numbers when it records none).
        images: uint8 array `[N, H, W, C]` in the model's input shape.
        labels: Optional int array `[N]` of true classes.
        batch_size: Images per call of the model.

    Returns:
        A list of N `Prediction`s.
    """
    logits = served.predict_logits(images, batch_size=batch_size)
    probabilities = tf.nn.softmax(logits).numpy()
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K]
    predictions = []
    for i in range(len(images)):
        label = int(np.argmax(logits[i]))
        true_label = None if labels is None else int(labels[i])
        predictions.append(
            Prediction(
                label=label,
                name=served.name_of(label),
                top=tuple((int(k), served.name_of(k), float(probabilities[i, k])) for k in top[i]),
                true_label=true_label,
                true_name=None if true_label is None else served.name_of(true_label),
            )
        )
    return predictions


def format_prediction(image, prediction):
    """One line: `cat1.png class=Cat top3=Cat:0.998 Dog:0.001 Bird:0.000`,
    with ` label=Cat` appended when the true class is known."""
    top = " ".join(f"{name}:{p:.3f}" for _, name, p in prediction.top)
    line = f"{image} class={prediction.name} top{len(prediction.top)}={top}"
    if prediction.true_name is not None:
        line += f" label={prediction.true_name}"
    return line


def format_json(image, prediction):
    """One JSON object (a line of JSON Lines): the image, its class by
    number (`class`) and `name`, its `probability`, the `top` classes, and
    `label` and `label_name` when the true class is known."""
    fields = {
        "image": image,
        "class": prediction.label,
        "name": prediction.name,
        "probability": prediction.top[0][2],
        "top": [
            {"class": label, "name": name, "probability": probability}
            for label, name, probability in prediction.top
        ],
    }
    if prediction.true_label is not None:
        fields.update(label=prediction.true_label, label_name=prediction.true_name)
    return json.dumps(fields, ensure_ascii=False)


def save_grid(images, names, predictions, path, title):
    """Save the images as the model sees them, captioned with the predicted
    class and its probability (and the true class, red when it differs).

    Args:
        images: uint8 array `[N, H, W, C]`.
        names: N short names shown above the predictions.
        predictions: N `Prediction`s.
        path: where to write the PNG (atomically, see `atomic.write_file`).
        title: figure title.
    """
    captions = []
    for name, prediction in zip(names, predictions):
        caption = f"{name}\npred {prediction.name} ({prediction.top[0][2]:.3f})"
        if prediction.true_name is not None:
            caption += f"\ntrue {prediction.true_name}"
        captions.append(caption)
    wrong = [
        i for i, p in enumerate(predictions) if p.true_label is not None and p.true_label != p.label
    ]
    atomic.write_file(
        path,
        lambda temporary: reporting.plot_predictions(images, captions, temporary, title, wrong),
    )
