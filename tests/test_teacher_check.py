"""The teacher is checked on the data before anything is distilled from it
(kd_tf/teacher_check.py, through `student.prepare_distillation` and the
command line in process, `kd_tf.main.run_command`), on a real-MNIST slice.

Teachers: the session's `mnist_teacher` (a kd_tf export taking uint8 images);
the same teacher with its first two outputs swapped; an MLP taking float32
images, trained on pixels in [0, 1]; an untrained (random) teacher.
"""

import os

import helpers
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import command_line, distribution, main, teacher_check
from kd_tf.stages import student

CLASSES = 10
# The order that reads the swapped teacher's outputs as the data set's classes.
SWAPPED = (1, 0, *range(2, CLASSES))
SWAPPED_FLAG = "--teacher_class_order=" + ",".join(map(str, SWAPPED))


def _swapped_teacher(path, teacher_dir):
    """A SavedModel of the export at `teacher_dir` whose logits 0 and 1 are
    swapped: a foreign model, which keeps the export's variables but not its
    labels file (`assets/labels.txt` would name its outputs unswapped)."""
    module = tf.Module()
    teacher = tf.saved_model.load(teacher_dir)
    module.signature = teacher.signatures["serving_default"]
    module.weights = list(teacher.variables)

    @tf.function(input_signature=[tf.TensorSpec([None, *helpers.IMAGE_SHAPE], tf.uint8,
                                                name="images")])
    def serve(images):
        logits = module.signature(images=images)["logits"]
        return {"logits": tf.gather(logits, SWAPPED, axis=1)}

    tf.saved_model.save(module, path, signatures={"serving_default": serve})
    return path


@pytest.fixture(scope="class")
def teachers(request, class_root, mnist_teacher):
    cls = request.cls
    cls.teacher = mnist_teacher
    cls.swapped = _swapped_teacher(os.path.join(class_root, "swapped"), mnist_teacher.export_dir)
    cls.float_path = os.path.join(class_root, "float_teacher.keras")
    cls.float_model = helpers.float_mnist_teacher(
        # Trained on images the check does not measure it on.
        cls.float_path, 0, 2048, seed=0, hidden=64, epochs=3
    )


@pytest.mark.usefixtures("class_root", "teachers")
class TeacherCheckTest(helpers.CommandTestCase):
    def _prepared(self, teacher_dir, *argv):
        """`(report fields, adapter, validation images)` of `prepare_distillation`
        (float32, so that the teacher's logits are its own)."""
        config = helpers.slice_config(self.root, "--stage=student", f"--teacher_dir={teacher_dir}",
                                      *argv)
        strategy = distribution.strategy_for(config.runtime, config.optimization.batch_size)
        with student.prepare_distillation(config, strategy, "float32") as inputs:
            images = inputs.splits.validation.images
            return inputs.report_fields(), inputs.teachers.members[0].adapter, images

    def test_a_float_input_teacher_gets_the_range_it_was_trained_on(self):
        with self.assertLogs("absl", "INFO") as logs:
            fields, adapter, images = self._prepared(self.float_path)
        self.assertEqual(fields["teacher_pixel_range"], "0-1")
        self.assertTrue(fields["teacher_pixel_range_chosen"])
        accuracies = fields["teacher_pixel_range_accuracies"]
        self.assertEqual(sorted(accuracies), ["-1-1", "0-1", "0-255"])
        self.assertEqual(fields["teacher_validation_accuracy"], accuracies["0-1"])
        self.assertGreater(accuracies["0-1"], 0.8)
        # ReLU makes the MLP nearly homogeneous: under 0-255 its argmax, and its
        # accuracy, barely change, but its logits grow 255-fold: the loss decides.
        losses = fields["teacher_pixel_range_losses"]
        self.assertGreater(losses["0-255"], 10 * losses["0-1"])
        # What distillation reads is the model's output on pixels in [0, 1].
        self.assertAllClose(adapter.logits(images[:64]), self.float_model(images[:64] / 255.0),
                            atol=1e-5, rtol=0)
        (line,) = [line for line in logs.output if "accuracy on 256 validation images" in line]
        for name, accuracy in accuracies.items():
            self.assertIn(f"{name} {100 * accuracy:.1f} %", line)
        self.assertIn("pixel range 0-1 (picked from the data", line)

    def test_a_given_range_decides_with_a_warning_when_another_fits_better(self):
        with self.assertLogs("absl", "WARNING") as logs:
            fields, adapter, images = self._prepared(self.float_path, "--teacher_pixel_range=0-255")
        self.assertEqual(fields["teacher_pixel_range"], "0-255")
        self.assertFalse(fields["teacher_pixel_range_chosen"])
        self.assertAllClose(adapter.logits(images[:8]), self.float_model(images[:8] * 1.0),
                            atol=1e-3, rtol=1e-5)
        self.assertRegex(
            "\n".join(logs.output),
            "its cross-entropy is lower under pixel range 0-1 than under the 0-255 given",
        )

    def test_a_teacher_with_swapped_classes_is_refused_with_the_order_found(self):
        line = self.assert_refused(
            ("--stage=student", f"--teacher_dir={self.swapped}"), 2,
            "predicts the classes in another order than the data set",
        )
        self.assertIn(f"pass {SWAPPED_FLAG} to read them so", line)
        self.assertFalse(os.path.exists(os.path.join(self.root, "saved_models", "student")))

    def test_the_class_order_found_restores_the_teacher(self):
        fields, adapter, images = self._prepared(self.swapped, SWAPPED_FLAG)
        own, own_adapter, _ = self._prepared(self.teacher.export_dir)
        self.assertEqual(fields["teacher_class_order"], list(SWAPPED))
        self.assertEqual(fields["teacher_validation_accuracy"], own["teacher_validation_accuracy"])
        self.assertAllEqual(adapter.logits(images[:64]), own_adapter.logits(images[:64]))

    def test_a_class_order_file(self):
        path = os.path.join(self.root, "order.txt")
        with open(path, "w") as f:
            f.write(" ".join(map(str, SWAPPED)) + "\n")
        config = command_line.parse(["--stage=student", f"--teacher_class_order={path}"])
        self.assertEqual(config.distillation.teacher_class_order, SWAPPED)


@pytest.mark.usefixtures("class_root")
class RandomTeacherTest(helpers.CommandTestCase):
    def test_a_random_teacher_is_refused_before_training(self):
        root = self.root
        teacher = helpers.tiny_export(os.path.join(root, "random"))
        self.assert_refused(
            ("--stage=student", f"--teacher_dir={teacher}"),
            main.EXIT_USER_ERROR,
            rf"^kd_tf: error: teacher {teacher} scores \d\.\d % on 256 validation images, below "
            r"the 20\.0 % it needs to teach \(--min_teacher_accuracy\); likely causes: its class "
            r"order, --teacher_class_order; a teacher trained on other data: fix them, or pass "
            r"--min_teacher_accuracy=0 to use it anyway$",
        )
        self.assertFalse(os.path.exists(os.path.join(root, "saved_models", "student")))
        self.assertFalse(os.path.exists(os.path.join(root, "logs", "student")))


class FindingsTest(tf.test.TestCase):
    """`found_order` and `default_floor` on confusion matrices."""

    def test_an_order_is_found_only_where_classes_are_dominated(self):
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 4, 400)
        identity = (0, 1, 2, 3)
        cycled = np.array([1, 2, 0, 3])[labels]
        confusion = teacher_check.confusion_matrix(labels, cycled, 4)
        self.assertEqual(teacher_check.found_order(confusion, identity), (1, 2, 0, 3))
        self.assertIsNone(teacher_check.found_order(confusion, (1, 2, 0, 3)))
        collapsed = teacher_check.confusion_matrix(labels, np.zeros_like(labels), 4)
        self.assertIsNone(teacher_check.found_order(collapsed, identity))
        random = teacher_check.confusion_matrix(labels, rng.integers(0, 4, 400), 4)
        self.assertIsNone(teacher_check.found_order(random, identity))

    def test_default_floor(self):
        self.assertAlmostEqual(teacher_check.default_floor(10, 0.3), 0.2)
        self.assertAlmostEqual(teacher_check.default_floor(10, 0.9), 0.45)
        self.assertAlmostEqual(teacher_check.default_floor(2, 0.6), 2 / 3)
        self.assertAlmostEqual(teacher_check.default_floor(100, 0.0), 0.02)


if __name__ == "__main__":
    tf.test.main()
