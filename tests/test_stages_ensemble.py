"""End to end: a student distilled from an ensemble of two teachers, the
session's kd_tf export and a `.keras` MLP taking float32 images, on a slice
of real MNIST, through export, TFLite and predict, cached and online; each
teacher's and the ensemble's test accuracy in the report, measured again
here; teachers that disagree on their classes refused in one line before
any training."""

import os
import re

import helpers
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import data, export, teacher


def _accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class EnsembleAccuracyTest(tf.test.TestCase):
    def test_the_ensemble_predicts_the_argmax_of_the_mean_probabilities(self):
        # Example 0: teacher A is sure of class 0, teacher B leans to class 1
        # with logits far below on class 0: the mean probabilities pick
        # class 0 (0.49 against 0.37), the mean logits class 1.
        # Example 1: both teachers pick class 2.
        logits = np.array(
            [[[5.0, 0.0, 0.0], [-20.0, 1.0, 0.0]], [[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]]]
        )
        each, ensemble = teacher.accuracies(logits, np.array([0, 2]))
        self.assertEqual(each, [1.0, 0.5])
        self.assertEqual(ensemble, 1.0)


@pytest.fixture(scope="class")
def ensemble(request, class_root, mnist_teacher):
    cls = request.cls
    cls.teacher = mnist_teacher
    cls.float_path = os.path.join(class_root, "float_teacher.keras")
    # Trained on other images than the session's teacher (the first 2048).
    cls.float_model = helpers.float_mnist_teacher(
        cls.float_path, 2048, 4096, seed=1, hidden=32, epochs=2
    )
    cls.test_split = data.read_packaged_mnist()[1]


@pytest.mark.slow
@pytest.mark.usefixtures("class_root", "ensemble")
class EnsembleStagesTest(helpers.CommandTestCase):
    def _student(self, name, *argv):
        export_dir = os.path.join(self.root, name)
        teachers = f"--teacher_dir={self.teacher.export_dir},{self.float_path}"
        status, lines = self.run_command(
            "--stage=student", teachers, f"--export_dir={export_dir}", helpers.FLOAT32, *argv
        )
        self.assertEqual(status, 0, lines)
        return helpers.read_report(export_dir), export_dir

    def test_a_student_of_two_teachers_through_export_tflite_and_predict(self):
        report, export_dir = self._student("cached", "--distillation_loss=kd:0.5,dkd:0.5")
        tflite = os.path.join(self.root, "cached.tflite")
        for argv in (
            ("--stage=tflite", f"--model_dir={export_dir}", f"--tflite_path={tflite}"),
            ("--stage=predict", f"--model_dir={export_dir}", "--test_index=0,1,2"),
        ):
            status, lines = self.run_command(*argv)
            self.assertEqual(status, 0, lines)
        self.assertEqual(report["teacher_logits"], "cached")
        self.assertEqual(report["flags"]["teacher_dir"], [self.teacher.export_dir, self.float_path])
        first, second = report["teachers"]
        self.assertEqual(
            (first["teacher_dir"], second["teacher_dir"]), (self.teacher.export_dir, self.float_path)
        )
        # Each teacher checked on its own: the .keras one's pixel range found.
        self.assertEqual((first["teacher_pixel_range"], second["teacher_pixel_range"]), (None, "0-1"))
        for teacher in report["teachers"]:
            self.assertGreater(teacher["teacher_validation_accuracy"], 0.5)
        self.assertNotIn("teacher_validation_accuracy", report)  # per teacher only
        self._assert_test_accuracies(report)

    def _assert_test_accuracies(self, report):
        """The report's accuracies against each teacher measured here: the
        export reloaded from disk, the .keras model on pixels in [0, 1]."""
        images, labels = self.test_split.images, self.test_split.labels
        logits = [
            export.load_serving_model(self.teacher.export_dir).predict_logits(images),
            self.float_model.predict(images / 255.0, batch_size=1024, verbose=0),
        ]
        # The same float32 weights through other batchings and kernels: an
        # image on a near tie may flip, one of 10,000 each.
        for teacher, measured in zip(report["teachers"], logits):
            self.assertAllClose(teacher["teacher_test_accuracy"], _accuracy(measured, labels),
                                atol=2e-4, rtol=0)
        ensemble = _accuracy(np.mean([_softmax(z) for z in logits], axis=0), labels)
        self.assertAllClose(report["ensemble_test_accuracy"], ensemble, atol=2e-4, rtol=0)
        best = max(_accuracy(z, labels) for z in logits)
        self.assertGreater(ensemble, best, "two teachers trained on other images help each other")

    def test_online_every_teacher_runs_each_step(self):
        report, _ = self._student("online", "--augment", "--distillation_loss=dist")
        self.assertEqual(report["teacher_logits"], "online")
        self.assertLen(report["teachers"], 2)
        self.assertIn("dist_loss", report["epochs"][0])

    def test_teachers_that_disagree_on_their_classes_are_refused(self):
        eight = os.path.join(self.root, "eight.keras")
        helpers.tiny_model(num_classes=8).save(eight)
        named = export.export_model(
            helpers.tiny_model(), os.path.join(self.root, "named"),
            check_images=np.zeros((2, *helpers.IMAGE_SHAPE), np.uint8),
            class_names=[f"digit {i}" for i in range(10)],
        )
        first = self.teacher.export_dir
        shown = {path: re.escape(path) for path in (first, eight, named)}
        cases = (
            (f"{first},{eight}", f"the teachers in --teacher_dir disagree: {shown[first]} "
             f"predicts 10 classes, {shown[eight]} 8"),
            (f"{first},{named}", f"the teachers in --teacher_dir name their classes "
             f"differently: class 0 is '0' in {shown[first]}, 'digit 0' in {shown[named]}"),
        )
        for teachers, pattern in cases:
            with self.subTest(teachers=teachers):
                export_dir = os.path.join(self.root, "refused")
                self.assert_refused(
                    ("--stage=student", f"--teacher_dir={teachers}", f"--export_dir={export_dir}"),
                    2, pattern,
                )
                self.assertFalse(os.path.exists(export_dir))

    def test_hints_and_a_class_order_take_one_teacher(self):
        teachers = f"--teacher_dir={self.teacher.export_dir},{self.float_path}"
        for flag, pattern in (
            ("--hint_layers=penultimate", "--hint_layers reads the layers of one teacher"),
            ("--teacher_class_order=1,0,2,3,4,5,6,7,8,9",
             "--teacher_class_order reorders the outputs of one teacher"),
        ):
            with self.subTest(flag=flag):
                self.assert_refused(("--stage=student", teachers, flag), 1, pattern)
