"""`predict`: classifies image files, or test images, with an export.

Prints one line per image, naming its class as the export names it
(`kd_tf.inference.format_prediction`, or a JSON object with
`print_format=json`: `format_json`) and, with `output_image`, saves a grid
of the images with their predictions (its directory is created, and checked
writable, before anything is loaded). Image files are preprocessed as the
export records its training images were (`kd_tf.preprocessing`; none
recorded: resized and never inverted; see `kd_tf.inference`).
"""

import os

from absl import logging

from kd_tf import atomic, export, inference, interrupts
from kd_tf.errors import ConfigError
from kd_tf.stages.training_run import load_data


def require_model_dir(config):
    """Refuses a `predict` or `tflite` run without `model_dir`."""
    if not config.predict.model_dir:
        raise ConfigError(
            ("stage", "model_dir"),
            f"{{0}}={config.stage} needs {{1}}=DIR: an export such as saved_models/student/1",
        )


def load_matching_model(config, splits):
    """The export in `model_dir`, checked against the data set."""
    served = export.load_serving_model(config.predict.model_dir)
    export.check_fits(served, "model", splits)
    return served


def _test_images(config):
    splits = load_data(config.data)
    served = load_matching_model(config, splits)
    indices = list(config.predict.test_index)
    if max(indices) >= len(splits.test):
        raise ConfigError(
            ("test_index",),
            f"{{0}}={max(indices)} is out of range: the {splits.dataset} test "
            f"split has {len(splits.test)} images (0 to {len(splits.test) - 1})",
        )
    names = [f"{splits.dataset}_test[{i}]" for i in indices]
    grid_names = [f"test[{i}]" for i in indices]
    return served, splits.test.take(indices), splits.test.labels[indices], names, grid_names


def _file_images(config):
    paths = inference.find_images(config.predict.images)
    served = export.load_serving_model(config.predict.model_dir)
    recorded = inference.model_preprocessing(config.predict.model_dir, served.image_shape)
    images = inference.load_images(paths, recorded)
    return served, images, None, paths, [os.path.basename(path) for path in paths]


def run(config):
    """`--stage=predict`: returns `{"names": [...], "predictions": [Prediction, ...]}`."""
    require_model_dir(config)
    settings = config.predict
    if (settings.images is None) == (settings.test_index is None):
        raise ConfigError(
            ("stage", "images", "test_index"),
            "{0}=predict needs either {1}=FILES (files, directories or globs) or {2}=I[,J...]",
        )
    unwritten = "nothing was written"
    if settings.output_image:
        atomic.check_writable(settings.output_image, "output_image")
        unwritten = f"{settings.output_image} was not written"
    load = _file_images if settings.images is not None else _test_images
    with interrupts.outcome(unwritten):
        served, images, labels, names, grid_names = load(config)
        predictions = inference.predict(served, images, labels, config.optimization.eval_batch_size)
        line = {"text": inference.format_prediction, "json": inference.format_json}
        for name, prediction in zip(names, predictions):
            print(line[settings.print_format](name, prediction), flush=True)
        if settings.output_image:
            inference.save_grid(
                images, grid_names, predictions, settings.output_image, title=settings.model_dir
            )
    if settings.output_image:
        logging.info("predictions drawn in %s", settings.output_image)
    return {"names": names, "predictions": predictions}
