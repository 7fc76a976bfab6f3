"""Models for any input (issue 12): every registry model at 8x8, 32x32x3 and
224x224x3, the colour models' sizes, and `--model=PATH.keras` through the
teacher and student stages on a real-MNIST slice, with its refusals.

The colour data set end to end, every stage, is tests/test_stages_colour.py.
"""

import os

import helpers
import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import main, models, precision
from kd_tf.errors import ConfigError

SHAPES = ((8, 8, 1), (32, 32, 3), (224, 224, 3))
NUM_CLASSES = 10
# Parameters on MNIST 28x28x1 and on 32x32x3 (the table of docs/models.md).
PARAMETERS = {
    "resnet_small": {(28, 28, 1): 605_354, (32, 32, 3): 605_930},
    "mobilenet_small": {(28, 28, 1): 38_346, (32, 32, 3): 38_634},
}
LENET_PARAMETERS = {
    "lenet_bn": {(28, 28, 1): 318_122, (32, 32, 3): 467_178},
    "lenet_narrow": {(28, 28, 1): 80_730, (32, 32, 3): 118_394},
}


@pytest.mark.slow
class RegistryTest(tf.test.TestCase):
    def test_every_model_runs_or_refuses_below_its_smallest_size(self):
        images = np.random.default_rng(0)
        for name, spec in models.MODELS.items():
            for shape in SHAPES:
                with self.subTest(model=name, shape=shape):
                    if shape[0] < spec.min_image_size:
                        with self.assertRaisesRegex(ConfigError, f"at least {spec.min_image_size}x"):
                            models.build_model(name, shape, NUM_CLASSES)
                        continue
                    keras.utils.set_random_seed(0)
                    model = models.build_model(name, shape, NUM_CLASSES)
                    batch = images.integers(0, 256, (2, *shape), dtype=np.uint8)
                    logits = np.asarray(model(batch, training=False))
                    self.assertEqual(logits.shape, (2, NUM_CLASSES))
                    self.assertEqual(logits.dtype, np.float32)
                    self.assertTrue(np.all(np.isfinite(logits)))

    def test_the_colour_models_take_every_size_and_fit_their_roles(self):
        for name, counts in PARAMETERS.items():
            self.assertEqual(models.MODELS[name].min_image_size, 1)
            for shape, count in counts.items():
                with self.subTest(model=name, shape=shape):
                    self.assertEqual(models.build_model(name, shape, NUM_CLASSES).count_params(), count)
        self.assertEqual(models.MODELS["resnet_small"].card.role, "teacher")
        self.assertEqual(models.MODELS["mobilenet_small"].card.role, "student")
        self.assertEqual((models.DEFAULT_TEACHER, models.DEFAULT_STUDENT), ("lenet_bn", "seed_mlp"))

    def test_lenet_narrow_is_lenet_bn_at_half_the_channels(self):
        for name, counts in LENET_PARAMETERS.items():
            self.assertEqual(models.MODELS[name].min_image_size, 16)
            self.assertEqual(models.MODELS[name].card.role, "teacher")
            for shape, count in counts.items():
                with self.subTest(model=name, shape=shape):
                    built = models.build_model(name, shape, NUM_CLASSES)
                    self.assertEqual(built.count_params(), count)
        layers_of = {
            name: {layer.name: layer for layer in models.build_model(name, (28, 28, 1), 10).layers}
            for name in LENET_PARAMETERS
        }
        for layer in ("block1_conv", "block2_conv", "fc1_dense"):
            wide = layers_of["lenet_bn"][layer].get_config()
            narrow = layers_of["lenet_narrow"][layer].get_config()
            width = "units" if layer == "fc1_dense" else "filters"
            self.assertEqual(narrow[width] * 2, wide[width])
            self.assertEqual(narrow.get("kernel_size"), wide.get("kernel_size"))
        self.assertEqual(layers_of["lenet_narrow"]["dropout"].rate, 0.3)

    @helpers.requires_bfloat16
    def test_the_colour_models_keep_float32_logits_under_mixed_precision(self):
        for name in PARAMETERS:
            with self.subTest(model=name), precision.policy("mixed_bfloat16"):
                model = models.build_model(name, (32, 32, 3), NUM_CLASSES)
                self.assertEqual(model.get_layer("stem_conv").compute_dtype, "bfloat16")
                self.assertEqual(model.get_layer("logits").compute_dtype, "float32")
                logits = model.predict_on_batch(np.zeros((2, 32, 32, 3), np.uint8))
                self.assertEqual(logits.dtype, np.float32)
                batch_norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
                self.assertNotEmpty(batch_norms)
                self.assertTrue(all(layer.synchronized for layer in batch_norms))


def _save(path, inputs, outputs):
    keras.Model(inputs, outputs).save(path)
    return path


def _float_cnn(shape=(28, 28, 1), classes=NUM_CLASSES):
    """A small CNN on float32 images 0-255 (it scales them itself)."""
    images = keras.Input(shape, dtype="float32")
    x = keras.layers.Rescaling(1.0 / 255)(images)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return images, keras.layers.Dense(classes)(x)


@pytest.mark.usefixtures("class_root", "class_teacher")
class ModelFileTest(helpers.CommandTestCase):
    """`--model=PATH.keras` through `main.run_command` on a real-MNIST slice."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        keras.utils.set_random_seed(0)

    def _path(self, name):
        return os.path.join(self.root, name)

    def _trains(self, stage, path, *argv):
        export_dir = self._path(f"{stage}_export")
        status, lines = self.run_command(
            f"--stage={stage}", f"--model={path}", f"--export_dir={export_dir}", *argv
        )
        self.assertEqual(status, 0, lines)
        report = helpers.read_report(export_dir)
        self.assertEqual(report["model"], path)
        self.assertEqual(report["flags"]["model"], path)
        return report

    def test_a_float_input_architecture_trains_as_the_teacher(self):
        path = _save(self._path("float_teacher.keras"), *_float_cnn())
        report = self._trains("teacher", path)
        self.assertEqual(report["params"], keras.saving.load_model(path).count_params())
        self.assertGreater(report["test_accuracy"], 0.1)

    def test_a_uint8_architecture_trains_as_the_student(self):
        path = self._path("student.keras")
        models.build_model("compact_cnn", helpers.IMAGE_SHAPE, NUM_CLASSES).save(path)
        report = self._trains("student", path, f"--teacher_dir={self.teacher.export_dir}")
        self.assertEqual(report["params"], 12_146)
        self.assertEqual(report["teacher_dir"], self.teacher.export_dir)

    def test_architectures_that_do_not_fit_are_refused_with_one_line(self):
        lambda_images = keras.Input(helpers.IMAGE_SHAPE, dtype="float32")
        lambda_x = keras.layers.Lambda(lambda x: x / 255.0)(lambda_images)
        int_images = keras.Input(helpers.IMAGE_SHAPE, dtype="int32")
        cases = {
            "wide.keras": (
                _float_cnn(shape=(32, 32, 3)),
                "takes float32 images 32x32x3, the data set's are uint8 28x28x1",
            ),
            "int32.keras": (
                (int_images, keras.layers.Dense(NUM_CLASSES)(keras.layers.Flatten()(int_images))),
                "takes int32 images 28x28x1",
            ),
            "five.keras": (
                _float_cnn(classes=5),
                (
                    r"must output logits \[batch, 10\] for the data set's 10 classes, it outputs "
                    r"\['5'\]"
                ),
            ),
            "lambda.keras": (
                (lambda_images, keras.layers.Dense(NUM_CLASSES)(keras.layers.Flatten()(lambda_x))),
                "could not be loaded with safe_mode=True .*without Lambda layers",
            ),
        }
        for name, (model, pattern) in cases.items():
            path = _save(self._path(name), *model)
            for stage in ("teacher", "scratch"):
                with self.subTest(model=name, stage=stage):
                    line = self.assert_refused(
                        (f"--stage={stage}", f"--model={path}"), main.EXIT_USER_ERROR, pattern
                    )
                    self.assertStartsWith(line, f"kd_tf: error: --model={path} ")
        self.assert_refused(
            ("--stage=teacher", f"--model={self._path('missing.keras')}"),
            main.EXIT_USER_ERROR,
            "missing.keras does not exist: pass a registry name or a .keras file",
        )

    def test_a_name_that_is_neither_is_a_flag_error(self):
        self.assert_refused(
            ("--stage=teacher", f"--model={self._path('net.h5')}"),
            main.EXIT_BAD_FLAG,
            r"--model must be a registered model \(lenet_bn, .*resnet_small, mobilenet_small\) "
            "or the path of a .keras file",
        )


if __name__ == "__main__":
    tf.test.main()
