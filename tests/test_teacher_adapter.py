"""Teachers from anywhere: float inputs, another resolution or channel count,
probabilities (also rounded to 16 bits), sigmoid outputs or log-probabilities
for logits, outputs in another order (kd_tf/teacher_adapter.py).

Each foreign teacher below wraps the same weights as a kd_tf-style teacher
(uint8 images in, true logits out), so what distillation sees through the
adapter can be compared with the true logits, in unit tests and in student
runs on a real-MNIST slice.
"""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from kd_tf import distillation_losses, export, main, precision, reporting, teacher_adapter
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


# The teachers' 'logits' outputs, from the body's true logits.
OUTPUTS = {
    "probabilities": tf.nn.softmax,
    "sigmoid": tf.sigmoid,
    "log_probabilities": tf.nn.log_softmax,
    "reversed": lambda logits: tf.reverse(logits, axis=[-1]),
}


def _teachers(root, body):
    """Teachers with the same weights: true logits from uint8 images, float32
    images in [0, 1], and each of `OUTPUTS` of the true logits."""
    teachers = {
        "true": _save(body, os.path.join(root, "true"), tf.uint8, _true_logits),
        "float": _save(body, os.path.join(root, "float"), tf.float32, lambda b, x: b(x)),
    }
    for name, output in OUTPUTS.items():
        teachers[name] = _save(
            body, os.path.join(root, name), tf.uint8, lambda b, x, f=output: f(_true_logits(b, x))
        )
    return teachers


def _bfloat16_softmax_teacher(path):
    """A `.keras` teacher ending in Dense(3, softmax) under mixed_bfloat16."""
    keras.utils.set_random_seed(0)
    with precision.policy("mixed_bfloat16"):
        model = keras.Sequential([
            keras.Input(SHAPE, dtype="uint8"), keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax"),
        ])
    model.save(path)
    return path


def _target(teacher_logits):
    """The teacher's softened log-probabilities at T = 4, per example: all
    that the distillation losses see of it (`teacher_distribution`)."""
    return distillation_losses.teacher_distribution(teacher_logits, 4.0)[1]


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

    def assert_true_loss(self, adapter):
        """The distillation loss of `adapter`'s logits is the true logits' (1e-5)."""
        true = _true_logits(self.body, self.images)
        self.assertAllClose(
            _target(adapter.logits(self.images)),
            _target(true), atol=1e-5, rtol=0,
        )
        return true

    def test_a_contract_teacher_is_read_as_it_is(self):
        adapter = self._adapter("true")
        self.assertEqual(adapter.output, "logits")
        self.assertAllEqual(adapter.predict_logits(self.images), adapter.model.predict_logits(self.images))

    def test_float_input_teacher_gives_the_true_loss(self):
        true = self.assert_true_loss(self._adapter("float", pixel_range="0-1"))
        wrong_range = self._adapter("float", pixel_range="0-255")
        self.assertGreater(np.max(np.abs(wrong_range.logits(self.images) - true)), 1e-2)

    def test_probabilities_are_detected_and_give_the_true_loss(self):
        adapter = self._adapter("probabilities")
        self.assertEqual(adapter.output, "probabilities")
        true = self.assert_true_loss(adapter)
        as_logits = self._adapter("probabilities", output="logits")
        self.assertGreater(
            np.max(np.abs(_target(as_logits.logits(self.images))
                          - _target(true))), 1e-2,
        )

    def test_sigmoid_outputs_are_read_as_logits(self):
        with self.assertLogs("absl", "WARNING") as logs:
            adapter = self._adapter("sigmoid")
        self.assertEqual(adapter.output, "logits")
        self.assertRegex(logs.output[0], r"lies in \[0, 1\] but is read as logits.*rows summing")

    def test_log_probabilities_are_read_as_logits_and_give_the_true_loss(self):
        adapter = self._adapter("log_probabilities")
        self.assertEqual(adapter.output, "logits")
        self.assert_true_loss(adapter)

    def test_a_bfloat16_softmax_is_read_as_probabilities(self):
        model = export.load_serving_model(
            _bfloat16_softmax_teacher(os.path.join(self.root, "bf16.keras")), float_input=True
        )
        deviation = np.max(np.abs(model.logits(self.images).numpy().sum(axis=-1) - 1))
        if deviation <= 1e-3:  # test_the_row_sum_rule still covers the rule
            self.skipTest(f"this CPU's bfloat16 softmax sums to 1 within {deviation:.2g}")
        adapter = teacher_adapter.TeacherAdapter(model, SHAPE, "0-255", "auto")
        with self.assertLogs("absl", "INFO") as logs:
            adapter.resolve_output(self.images)
        self.assertEqual(adapter.output, "probabilities")
        self.assertRegex(logs.output[0], r"holds probabilities \(on 64 images, values in .* "
                                         r"rows summing to 0\.99\d* to 1\.00\d*: within 0.01562")

    def test_probabilities_rewritten_to_bfloat16_are_detected(self):
        # With AMX, precision auto runs the teacher's graph in bfloat16 (see
        # `precision.graph_rewrite`; elsewhere the rewrite changes nothing).
        with precision.graph_rewrite("mixed_bfloat16"):
            adapter = self._adapter("probabilities")
        self.assertEqual(adapter.output, "probabilities")

    def test_the_row_sum_rule(self):
        rounded = [[0.3359375, 0.3359375, 0.333984375]]  # a 16-bit softmax row: 1.0059
        self.assertTrue(teacher_adapter.looks_like_probabilities(rounded))
        self.assertFalse(teacher_adapter.looks_like_probabilities([[0.35, 0.35, 0.35]]))
        self.assertFalse(teacher_adapter.looks_like_probabilities([[0.5, 0.4, 0.0]]))
        self.assertFalse(teacher_adapter.looks_like_probabilities([[1.02, -0.01, -0.01]]))

    def test_a_class_order_reorders_the_outputs(self):
        model = export.load_serving_model(self.paths["reversed"])
        order = tuple(reversed(range(CLASSES)))
        adapter = teacher_adapter.TeacherAdapter(model, SHAPE, output="logits", class_order=order)
        self.assertAllEqual(adapter.logits(self.images), self._adapter("true").logits(self.images))

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


class ForeignTeacherStudentTest(tf.test.TestCase):
    """Students distilled on a real-MNIST slice from each foreign teacher train
    as from the teacher with the true logits."""

    def _student(self, root, teacher, *argv):
        export_dir = os.path.join(root, "students", os.path.basename(teacher) + str(len(argv)))
        # The teachers are untrained: the teacher check must not refuse them. In
        # float32, so that every teacher's logits are the true logits within 1e-5
        # on every CPU (with AMX, precision auto rounds them to bfloat16).
        status = main.run_command([
            "--stage=student", f"--teacher_dir={teacher}", f"--export_dir={export_dir}",
            "--train_examples=256", "--validation_examples=128", "--batch_size=64",
            "--epochs=2", "--seed=4", f"--log_dir={root}/logs", "--min_teacher_accuracy=0",
            "--precision=float32", *argv,
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
        self.assertEqual(float_input["teacher_pixel_range"], "0-1")
        for report in (float_input, probabilities):
            self.assertEqual(report["teacher_validation_accuracy"],
                             reference["teacher_validation_accuracy"])
        for report in (float_input, probabilities):
            for got, want in zip(report["epochs"], reference["epochs"]):
                self.assertAllClose(
                    [got["loss"], got["val_loss"]], [want["loss"], want["val_loss"]],
                    atol=1e-5, rtol=0,
                )


if __name__ == "__main__":
    tf.test.main()
