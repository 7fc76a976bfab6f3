"""Every stage end to end on a small slice of real MNIST, and the command line."""

import glob
import os
import shutil
import subprocess
import sys
import tempfile

import tensorflow as tf
from absl import flags

from kd_tf import command_line, config, data, export, reporting, stages, training
from kd_tf.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT_KEYS = {
    "stage",
    "flags",
    "data",
    "model",
    "params",
    "epochs",
    "best_epoch",
    "test_accuracy",
    "test_loss",
}
EPOCH_KEYS = {"train_seconds", "loss", "accuracy", "val_loss", "val_accuracy"}
STUDENT_KEYS = {"teacher_dir", "teacher_logits", "teacher_logits_seconds"}


class StagesTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()
        cls.test_split = data.read_packaged_mnist()[1]
        cls.teacher = stages.run(cls.settings("--stage=teacher", "--model=seed_cnn", "--augment"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root)
        super().tearDownClass()

    @classmethod
    def settings(cls, *argv):
        return command_line.parse(
            [
                "--epochs=2",
                "--train_examples=384",
                "--validation_examples=256",
                "--batch_size=64",
                f"--saved_models_dir={cls.root}/saved_models",
                f"--log_dir={cls.root}/logs",
                *argv,
            ]
        )

    def _check_export(self, report, stage):
        export_dir = report["export_dir"]
        self.assertEqual(os.path.dirname(os.path.dirname(export_dir)), f"{self.root}/saved_models")
        on_disk = reporting.read_json(os.path.join(export_dir, "assets.extra", "report.json"))
        self.assertTrue(REPORT_KEYS <= set(on_disk), REPORT_KEYS - set(on_disk))
        self.assertEqual(on_disk["stage"], stage)
        self.assertLen(on_disk["epochs"], 2)
        for epoch in on_disk["epochs"]:
            self.assertTrue(EPOCH_KEYS <= set(epoch))
        self.assertIn(on_disk["best_epoch"], (1, 2))
        best = on_disk["epochs"][on_disk["best_epoch"] - 1]["val_accuracy"]
        self.assertEqual(best, max(e["val_accuracy"] for e in on_disk["epochs"]))
        self.assertEqual(on_disk["data"]["train_examples"], 384)
        self.assertEqual(on_disk["data"]["test_examples"], 10000)
        self.assertEqual(on_disk["flags"]["stage"], stage)
        self.assertTrue(os.path.isfile(os.path.join(export_dir, "assets.extra", "curves.png")))
        self.assertTrue(glob.glob(f"{self.root}/logs/{stage}/*/train/events.out.tfevents.*"))

        served = export.load_serving_model(export_dir)
        test = served.predict_logits(self.test_split.images)
        measured = training.evaluate_logits(test, self.test_split.labels)
        self.assertAllClose(measured["accuracy"], on_disk["test_accuracy"])
        self.assertAllClose(measured["loss"], on_disk["test_loss"], rtol=1e-5)
        return on_disk

    def test_teacher(self):
        report = self._check_export(self.teacher, "teacher")
        self.assertEqual(report["model"], "seed_cnn")
        self.assertGreater(report["test_accuracy"], 0.5)

    def test_student_cached_and_online(self):
        for extra, mode in (
            (("--augment", "--augment_views=2"), "cached"),
            (("--augment",), "online"),
        ):
            report = stages.run(
                self.settings(
                    "--stage=student", f"--teacher_dir={self.teacher['export_dir']}", *extra
                )
            )
            on_disk = self._check_export(report, "student")
            self.assertTrue(STUDENT_KEYS <= set(on_disk))
            self.assertEqual(on_disk["teacher_logits"], mode)
            self.assertEqual(on_disk["teacher_dir"], self.teacher["export_dir"])
            self.assertEqual(on_disk["model"], "seed_mlp")
            if mode == "cached":
                self.assertGreater(on_disk["teacher_logits_seconds"], 0.0)

    def test_scratch(self):
        report = self._check_export(stages.run(self.settings("--stage=scratch")), "scratch")
        self.assertEqual(report["model"], "seed_mlp")

    def test_compare(self):
        flagfiles = {}
        for stage in ("teacher", "student", "scratch"):
            flagfiles[stage] = os.path.join(self.root, f"{stage}.cfg")
            with open(flagfiles[stage], "w") as f:
                f.write(f"--stage={stage}\n--model=compact_cnn\n--epochs=5\n")
        report = stages.run(
            self.settings(
                "--stage=compare",
                *(f"--{stage}_flagfile={path}" for stage, path in flagfiles.items()),
            )
        )
        self.assertEqual(
            [row["run"] for row in report["summary"]], ["teacher", "student", "scratch"]
        )
        for run_dir in report["runs"].values():
            sub = reporting.read_json(os.path.join(run_dir, "assets.extra", "report.json"))
            self.assertLen(sub["epochs"], 2, "flags given to compare override the flag files")
            self.assertIn("test_accuracy", sub["epochs"][0])
        student = reporting.read_json(
            os.path.join(report["runs"]["student"], "assets.extra", "report.json")
        )
        self.assertEqual(student["teacher_dir"], report["runs"]["teacher"])
        for name in ("comparison.png", "report.json", "summary.md"):
            self.assertTrue(os.path.isfile(os.path.join(report["export_dir"], name)))

    def test_versioned_exports_are_not_overwritten(self):
        first = stages.run(self.settings("--stage=scratch", "--epochs=1"))["export_dir"]
        before = _read_bytes(os.path.join(first, "saved_model.pb"))
        second = stages.run(self.settings("--stage=scratch", "--epochs=1"))["export_dir"]
        self.assertEqual(int(os.path.basename(second)), int(os.path.basename(first)) + 1)
        self.assertEqual(_read_bytes(os.path.join(first, "saved_model.pb")), before)


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _cli(*argv):
    return subprocess.run(
        [sys.executable, "-m", "kd_tf.main", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class CommandLineTest(tf.test.TestCase):
    def test_bad_flag_values_are_rejected(self):
        cases = {
            "--temperature=0": "--temperature must be > 0",
            "--temperature=-2": "--temperature must be > 0",
            "--alpha=1.5": "--alpha must be in [0, 1]",
            "--alpha=-0.1": "--alpha must be in [0, 1]",
            "--epochs=0": "--epochs must be >= 1",
            "--batch_size=0": "--batch_size must be >= 1",
            "--steps_per_execution=0": "--steps_per_execution must be >= 1",
            "--model=resnet9000": "--model",
            "--stage=deploy": "--stage",
        }
        for argument, message in cases.items():
            with self.subTest(argument=argument):
                stage = [] if argument.startswith("--stage") else ["--stage=student"]
                with self.assertRaises((flags.Error, ConfigError)) as caught:
                    command_line.parse([*stage, argument])
                self.assertIn(message, command_line.describe(caught.exception))
        for argument in ("--temperature=0", "--model=resnet9000"):
            with self.subTest(command_line=argument):
                result = _cli("--stage=student", argument)
                self.assertNotEqual(result.returncode, 0)
                self.assertIn(cases[argument], result.stderr)
                self.assertNotIn("Traceback", result.stderr)

    def test_student_without_teacher(self):
        result = _cli("--stage=student", "--train_examples=64", "--saved_models_dir=/nonexistent/x")
        self.assertEqual(result.returncode, 2)
        self.assertIn("--teacher_dir", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_flag_files_parse(self):
        for path in sorted(glob.glob(os.path.join(REPO, "flags", "*.cfg"))):
            with self.subTest(path=os.path.basename(path)):
                cwd = os.getcwd()
                os.chdir(REPO)
                try:
                    settings = command_line.parse([f"--flagfile={path}"])
                finally:
                    os.chdir(cwd)
                self.assertIn(settings.stage, config.STAGES)

    def test_helpfull_lists_the_models(self):
        result = _cli("--helpfull")
        for name in ("lenet_bn", "seed_cnn", "seed_mlp", "compact_cnn"):
            self.assertIn(name, result.stdout)


if __name__ == "__main__":
    tf.test.main()
