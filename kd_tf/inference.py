"""Predicting with an exported model on image files or test images.

`find_images` expands `--images` into files, `model_background` reads the
background of a model's training images from its export's report,
`load_images` turns PNG/JPEG files of any size into the model's uint8 input,
and `predict` returns each image's class and top classes, which
`format_prediction` renders as one line.

What `load_images` does to every file, in this order:

1. decode (`kd_tf.data.images.decode`) into uint8 with the model's number of
   channels: colour to grayscale (ITU-R 601 luma) for a 1-channel model,
   grayscale to RGB for a 3-channel one; an alpha channel is dropped;
2. invert (`255 - x`) when the image's background and the model's disagree:
   the image's is "light" when the mean brightness of its outermost one-pixel
   frame is above mid-grey (127.5), else "dark" (`kd_tf.data.images.background`);
   the model's is the one its report records for its training images (MNIST:
   "dark", so dark ink on light paper is inverted for it). A model without
   one (a foreign SavedModel, a `.keras` file) gets no image inverted;
3. resize, keeping the aspect ratio, to fit the model's H x W (bilinear with
   anti-aliasing) and pad the short side equally on both ends with black;
4. round to uint8.

Usage:

```python
served = export.load_serving_model("saved_models/student/1")
paths = inference.find_images("digits/*.png")
background = inference.model_background("saved_models/student/1")  # "dark", "light" or None
images = inference.load_images(paths, served.image_shape, background)
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

from kd_tf import atomic, reporting
from kd_tf.data import images as image_data
from kd_tf.errors import ConfigError, UserError
from kd_tf.export import ASSETS_EXTRA

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
TOP_K = 3
_GLOB_CHARACTERS = "*?["


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The model's answer for one image.

    Arguments:
        label: The predicted class (argmax of the logits).
        top: `(class, probability)` pairs of the most probable classes,
            most probable first.
        true_label: The known class of the image, or `None`.
    """

    label: int
    top: tuple
    true_label: int | None = None


def find_images(spec):
    """Expand `--images` into a sorted list of image files.

    Args:
        spec: Comma-separated entries, each a file, a directory (its
            `.png`, `.jpg` and `.jpeg` files, not recursive) or a glob
            pattern such as `digits/*.png`.

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
                f"{{0}} entry {entry} matches no image file: pass PNG or JPEG files "
                f"({', '.join(IMAGE_EXTENSIONS)})",
            )
        paths += [path for path in found if path not in paths]
    if not paths:
        raise ConfigError(("images",), "{0} is empty: pass image files, a directory or a glob")
    return paths


def _check_image_shape(image_shape):
    if len(image_shape) != 3 or None in image_shape or image_shape[-1] not in (1, 3):
        raise UserError(
            f"the model takes images of shape {tuple(image_shape)}: image files can only be "
            "converted for a fixed H x W with 1 or 3 channels"
        )


def model_background(model_dir):
    """The background of the model's training images, as the report of its
    export (`assets.extra/report.json`, `data.background`) records it.

    Args:
        model_dir: `--model_dir`: an export directory or a `.keras` file.

    Returns:
        `"dark"` or `"light"`, or None when there is no such record (a
        foreign SavedModel, a `.keras` file, an export older than the
        record), which is logged: images are then not inverted.
    """
    path = os.path.join(model_dir, ASSETS_EXTRA, "report.json")
    try:
        with open(path) as f:
            recorded = json.load(f).get("data", {}).get("background")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded in image_data.BACKGROUNDS:
        logging.info("%s was trained on images with a %s background", model_dir, recorded)
        return recorded
    logging.warning(
        "%s has no report recording the background of its training images (%s): "
        "the images are not inverted",
        model_dir,
        path,
    )
    return None


def convert_image(image, image_shape, background):
    """Convert one decoded image to the model's input (steps 2-4 above).

    Args:
        image: uint8 array or tensor `[h, w, C]` with the model's channels.
        image_shape: The model's `(H, W, C)`.
        background: The model's training images' background (`"dark"` or
            `"light"`, see `model_background`); the image is inverted when
            its own differs. None: never inverted.

    Returns:
        uint8 array `[H, W, C]`.
    """
    height, width, _ = image_shape
    pixels = tf.cast(image, tf.float32)
    if background is not None and image_data.background(image) != background:
        pixels = 255.0 - pixels
    resized = tf.image.resize_with_pad(pixels, height, width, antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8).numpy()


def load_images(paths, image_shape, background):
    """Read image files as the model's uint8 input (see the module doc).

    Args:
        paths: PNG, JPEG (or GIF, BMP) files of any size, grayscale or colour.
        image_shape: The model's `(H, W, C)`, C being 1 or 3.
        background: The model's training images' background, or None (see
            `convert_image`).

    Returns:
        uint8 array `[len(paths), H, W, C]`.

    Raises:
        UserError: A file cannot be decoded, or the model's input is not a
            fixed-size 1- or 3-channel image.
    """
    _check_image_shape(image_shape)
    images = []
    for path in paths:
        try:
            image = image_data.decode(tf.io.read_file(path), channels=image_shape[-1])
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
            raise UserError(
                f"cannot read {path} as an image ({e.message.splitlines()[0]}): "
                "pass PNG or JPEG files"
            ) from e
        images.append(convert_image(image, image_shape, background))
    return np.stack(images)


def predict(served, images, labels=None, batch_size=1024):
    """Classify images with a loaded model.

    Args:
        served: A `kd_tf.export.ServingModel`.
        images: uint8 array `[N, H, W, C]` in the model's input shape.
        labels: Optional int array `[N]` of true classes.
        batch_size: Images per call of the model.

    Returns:
        A list of N `Prediction`s.
    """
    logits = served.predict_logits(images, batch_size=batch_size)
    probabilities = tf.nn.softmax(logits).numpy()
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K]
    return [
        Prediction(
            label=int(np.argmax(logits[i])),
            top=tuple((int(k), float(probabilities[i, k])) for k in top[i]),
            true_label=None if labels is None else int(labels[i]),
        )
        for i in range(len(images))
    ]


def format_prediction(name, prediction):
    """One line: `digit7.png class=7 top3=7:0.998 2:0.001 3:0.000`, with
    ` label=7` appended when the true class is known."""
    top = " ".join(f"{k}:{p:.3f}" for k, p in prediction.top)
    line = f"{name} class={prediction.label} top{len(prediction.top)}={top}"
    if prediction.true_label is not None:
        line += f" label={prediction.true_label}"
    return line


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
        caption = f"{name}\npred {prediction.label} ({prediction.top[0][1]:.3f})"
        if prediction.true_label is not None:
            caption += f"\ntrue {prediction.true_label}"
        captions.append(caption)
    wrong = [
        i for i, p in enumerate(predictions) if p.true_label is not None and p.true_label != p.label
    ]
    atomic.write_file(
        path,
        lambda temporary: reporting.plot_predictions(images, captions, temporary, title, wrong),
    )
