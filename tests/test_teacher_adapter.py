"""Teachers from anywhere: float inputs, another resolution or channel count,
probabilities for logits (kd_tf/teacher_adapter.py).

Each foreign teacher below wraps the same weights as a kd_tf-style teacher
(uint8 images in, true logits out), so what distillation sees through the
adapter can be compared with the true logits, in unit tests and in student
runs on a real-MNIST slice.
"""

import os
import tempfile

import helpers
import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import distillation, export, main, reporting, teacher_adapter
from kd_tf.errors import UserError

SHAPE, CLASSES = (28, 28, 1), 10


def _images(count, shape=SHAPE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


def _body(seed=0):
    """Dense logits of images scaled to [0, 1]."""
    keras.utils.set_random_seed(seed)
    body = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(CLASSES)])
    body.build((None, *SHAPE))
    return body


def _save(body, directory, input_dtype, outputs, shape=SHAPE):
    """A SavedModel of `body` whose `images` are `input_dtype` and whose
    'logits' output is `outputs(body, images)`."""
    module = tf.Module()
    module.body = body

    @tf.function(input_signature=[tf.TensorSpec((None, *shape), input_dtype, name="images")])
    def serve(images):
        return {"logits": outputs(body, images)}

    tf.saved_model.save(module, directory, signatures={"serving_default": serve})
    return directory


def _true_logits(body, images):
    return body(tf.cast(images, tf.float32) / 255.0)


def _teachers(root, body):
    """Three teachers with the same weights: true logits from uint8 images,
    float32 images in [0, 1], and probabilities."""
    return {
        "true": _save(body, os.path.join(root, "true"), tf.uint8, _true_logits),
        "float": _save(body, os.path.join(root, "float"), tf.float32, lambda b, x: b(x)),
        "probabilities": _save(
            body, os.path.join(root, "probabilities"), tf.uint8,
            lambda b, x: tf.nn.softmax(_true_logits(b, x)),
        ),
    }


def _loss(teacher_logits, images, labels):
    student_logits = np.random.default_rng(7).normal(size=(len(images), CLASSES))
    return distillation.distillation_loss(labels, student_logits, teacher_logits, 4.0, 0.9)


class AdapterTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()
        cls.body = _body()
        cls.paths = _teachers(cls.root, cls.body)
        cls.images, cls.labels = _images(64), np.arange(64) % CLASSES

    def _adapter(self, name, pixel_range="0-255", output="auto"):
        model = export.load_serving_model(self.paths[name], float_input=True)
        adapter = teacher_adapter.TeacherAdapter(model, SHAPE, pixel_range, output)
        adapter.resolve_output(self.images)
        return adapter

    def test_a_contract_teacher_is_read_as_it_is(self):
        adapter = self._adapter("true")
        self.assertEqual(adapter.output, "logits")
        self.assertAllEqual(adapter.predict_logits(self.images), adapter.model.predict_logits(self.images))

    def test_float_input_teacher_gives_the_true_loss(self):
        adapter = self._adapter("float", pixel_range="0-1")
        true = _true_logits(self.body, self.images)
        self.assertAllClose(
            _loss(adapter.logits(self.images), self.images, self.labels),
            _loss(true, self.images, self.labels), atol=1e-5, rtol=0,
        )
        wrong_range = self._adapter("float", pixel_range="0-255")
        self.assertGreater(np.max(np.abs(wrong_range.logits(self.images) - true)), 1e-2)

    def test_probabilities_are_detected_and_give_the_true_loss(self):
        adapter = self._adapter("probabilities")
        self.assertEqual(adapter.output, "probabilities")
        true = _true_logits(self.body, self.images)
        self.assertAllClose(
            _loss(adapter.logits(self.images), self.images, self.labels),
            _loss(true, self.images, self.labels), atol=1e-5, rtol=0,
        )
        as_logits = self._adapter("probabilities", output="logits")
        self.assertGreater(
            np.max(np.abs(_loss(as_logits.logits(self.images), self.images, self.labels)
                          - _loss(true, self.images, self.labels))), 1e-2,
        )

    def test_float_input_needs_the_teacher_side(self):
        with self.assertRaisesRegex(UserError, "must take one uint8 input"):
            export.load_serving_model(self.paths["float"])

    def test_other_resolution_and_channels_are_converted(self):
        colour = _save(
            _body(), os.path.join(self.root, "colour32"), tf.uint8,
            lambda b, x: tf.reduce_sum(tf.cast(x, tf.float32), axis=[1, 2])[:, :1] * tf.ones([1, CLASSES]),
            shape=(32, 32, 3),
        )
        model = export.load_serving_model(colour)
        teacher_adapter.check_input(model, SHAPE)
        adapter = teacher_adapter.TeacherAdapter(model, SHAPE, output="logits")
        # Flat grey images stay flat and grey through resizing and RGB.
        levels = np.array([0, 17, 128, 255], np.uint8)
        flat = np.broadcast_to(levels[:, None, None, None], (4, *SHAPE)).copy()
        converted = adapter.images(flat)
        self.assertEqual(converted.dtype, tf.uint8)
        self.assertEqual(converted.shape, (4, 32, 32, 3))
        self.assertAllEqual(converted, np.broadcast_to(levels[:, None, None, None], (4, 32, 32, 3)))
        # A bright left half stays on the left: the image is resized, not cropped.
        half = np.zeros((1, *SHAPE), np.uint8)
        half[:, :, :14] = 255
        columns = adapter.images(half).numpy()[0, 16, :, 0]
        self.assertAllEqual(columns[:15], [255] * 15)
        self.assertAllEqual(columns[17:], [0] * 15)

    def test_channels_that_cannot_be_converted_are_refused(self):
        four = _save(_body(), os.path.join(self.root, "four"), tf.uint8,
                     lambda b, x: tf.zeros([tf.shape(x)[0], CLASSES]), shape=(28, 28, 4))
        with self.assertRaisesRegex(UserError, "takes images of 4 channels but the data set's have 1"):
            teacher_adapter.check_input(export.load_serving_model(four), SHAPE)


@pytest.mark.slow
class ForeignTeacherStudentTest(tf.test.TestCase):
    """Students distilled on a real-MNIST slice from each foreign teacher train
    as from the teacher with the true logits."""

    def _student(self, root, teacher, *argv):
        export_dir = os.path.join(root, "students", os.path.basename(teacher) + str(len(argv)))
        status = main.run_command([
            "--stage=student", f"--teacher_dir={teacher}", f"--export_dir={export_dir}",
            "--train_examples=256", "--validation_examples=128", "--batch_size=64",
            "--epochs=2", "--seed=4", f"--log_dir={root}/logs", helpers.FLOAT32, *argv,
        ])
        self.assertEqual(status, 0)
        return reporting.read_json(os.path.join(export_dir, "assets.extra", "report.json"))

    def test_students_lose_what_the_true_logits_give(self):
        root = tempfile.mkdtemp()
        paths = _teachers(root, _body(seed=1))
        reference = self._student(root, paths["true"])
        float_input = self._student(root, paths["float"], "--teacher_pixel_range=0-1")
        probabilities = self._student(root, paths["probabilities"])
        self.assertEqual(probabilities["teacher_output"], "probabilities")
        self.assertEqual(float_input["teacher_output"], "logits")
        for report in (float_input, probabilities):
            for got, want in zip(report["epochs"], reference["epochs"]):
                self.assertAllClose(
                    [got["loss"], got["val_loss"]], [want["loss"], want["val_loss"]],
                    atol=1e-5, rtol=0,
                )


if __name__ == "__main__":
    tf.test.main()
