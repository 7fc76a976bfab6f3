"""End to end: students distilled with DKD and DIST, and with a hint (online,
mixup), from the session's teacher on a slice of real MNIST, through export,
TFLite and predict; hints refused in one line before any training."""

import os

import helpers
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import data, models, pipelines


@pytest.mark.usefixtures("class_root", "class_teacher")
class DistillationStagesTest(helpers.CommandTestCase):
    def _student_then_tflite_and_predict(self, name, *argv):
        export_dir = os.path.join(self.root, name)
        status, lines, _ = self.run_command(
            "--stage=student", f"--teacher_dir={self.teacher.export_dir}",
            f"--export_dir={export_dir}", "--precision=float32", *argv,
        )
        self.assertEqual(status, 0, lines)
        tflite = os.path.join(self.root, f"{name}.tflite")
        for argv in (
            ("--stage=tflite", f"--model_dir={export_dir}", f"--tflite_path={tflite}"),
            ("--stage=predict", f"--model_dir={export_dir}", "--test_index=0,1,2"),
        ):
            status, lines, _ = self.run_command(*argv)
            self.assertEqual(status, 0, lines)
        self.assertTrue(os.path.isfile(tflite))
        return helpers.read_report(export_dir), export_dir

    def test_dkd_and_dist(self):
        report, _ = self._student_then_tflite_and_predict(
            "dkd_dist", "--distillation_loss=dkd:0.5,dist:0.5", "--alpha=0.5", "--dkd_beta=2"
        )
        terms = {term["name"]: term for term in report["distillation_loss"]}
        self.assertEqual(terms["dkd"]["beta"], 2.0)
        self.assertEqual((terms["dkd"]["weight"], terms["dist"]["weight"]), (0.5, 0.5))
        self.assertEqual(report["alpha"], 0.5)
        for key in ("student_loss", "distillation_loss", "dkd_loss", "dist_loss", "val_dkd_loss"):
            self.assertIn(key, report["epochs"][0])
        epoch = report["epochs"][0]
        self.assertAllClose(
            epoch["distillation_loss"], 0.5 * epoch["dkd_loss"] + 0.5 * epoch["dist_loss"],
            rtol=1e-4,
        )

    def test_hint_with_mixup_online_exports_the_student_alone(self):
        """The session's teacher is an MLP: its penultimate layer (fc2, 64
        units) teaches compact_cnn's (fc1_relu, 32) through a dense projection."""
        report, export_dir = self._student_then_tflite_and_predict(
            "hint", "--model=compact_cnn", "--hint_layers=penultimate", "--hint_weight=0.5",
            "--augment", "--mixup_alpha=0.4",
        )
        self.assertEqual(report["teacher_logits"], "online")
        (_, hint) = report["distillation_loss"]
        self.assertEqual(
            (hint["teacher_layer"], hint["student_layer"], hint["projection"], hint["weight"]),
            ("fc2", "fc1_relu", "Dense", 0.5),
        )
        self.assertIn("hint_loss", report["epochs"][0])
        student = models.build_model("compact_cnn", (28, 28, 1), 10)
        exported = helpers.exported_variables(export_dir)
        self.assertCountEqual(
            [name.split(":")[0] for name in exported if "seed_generator" not in name],
            [weight.path for weight in student.weights],
        )

    def test_hints_are_refused_before_any_training(self):
        foreign = helpers.save_module(
            os.path.join(self.root, "foreign"),
            lambda images: {"logits": tf.zeros([tf.shape(images)[0], 10])},
            tf.TensorSpec([None, 28, 28, 1], tf.uint8, name="images"),
        )
        teacher = f"--teacher_dir={self.teacher.export_dir}"
        cases = (
            ((f"--teacher_dir={foreign}", "--hint_layers=penultimate"), "exposes its logits only"),
            ((teacher, "--hint_layers=conv9:fc1"), r"the teacher .* has no layer 'conv9'; its layers: "),
            ((teacher, "--hint_layers=fc1:nope"), r"the student seed_mlp has no layer 'nope'"),
            (
                (teacher, "--model=compact_cnn", "--hint_layers=fc2:block2_relu"),
                r"cannot be projected onto the teacher layer 'fc2'",
            ),
        )
        for argv, pattern in cases:
            with self.subTest(argv=argv):
                export_dir = os.path.join(self.root, "refused")
                self.assert_refused(
                    ("--stage=student", *argv, f"--export_dir={export_dir}"), 2, pattern
                )
                self.assertFalse(os.path.exists(export_dir))


class MixupPipelineTest(tf.test.TestCase):
    def test_teacher_and_student_see_one_blend_and_its_labels(self):
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (32, 4, 4, 1), dtype=np.uint8)
        split = data.Split(images, rng.integers(0, 3, 32).astype(np.int64))
        stream = pipelines.training_dataset(split, 8, seed=5, mixup_alpha=1.0, num_classes=3)
        plain = pipelines.training_dataset(split, 8, seed=5)
        for (mixed, labels), (originals, classes) in zip(stream.take(3), plain.take(3)):
            # Example i is blended with i - 1: its own class's share is the ratio.
            i = next(i for i in range(8) if classes[i] != classes[i - 1])
            ratio = float(labels[i][int(classes[i])])
            one_hot = tf.one_hot(classes, 3)
            expected = ratio * one_hot + (1 - ratio) * tf.roll(one_hot, 1, 0)
            self.assertAllClose(labels, expected, atol=1e-6)
            pixels = tf.cast(originals, tf.float32)
            blend = ratio * pixels + (1 - ratio) * tf.roll(pixels, 1, 0)
            self.assertAllClose(tf.cast(mixed, tf.float32), blend, atol=0.5 + 1e-3)
        again = [batch[0].numpy() for batch in stream.take(3)]
        self.assertAllEqual(again, [batch[0].numpy() for batch in stream.take(3)])


if __name__ == "__main__":
    tf.test.main()
