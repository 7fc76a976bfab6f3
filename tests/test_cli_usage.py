"""What a user sees on the command line: the usage text of `--help`, one line
per epoch (and no TensorFlow error lines), a Ctrl-C message that says what is
true (defect 6), and TFLite files measured with LiteRT's interpreter."""

import contextlib
import glob
import io
import os
import re
import shutil
import signal
import tempfile
from unittest import mock

import helpers
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import (
    atomic,
    backup,
    export,
    inference,
    interrupts,
    lite,
    main,
    reporting,
    stages,
    tuning,
)

SMALL_RUN = ("--epochs=1", "--train_examples=256", "--validation_examples=256", "--batch_size=64")
# The flags `--help` shows for each stage, besides --stage and --flagfile.
STAGE_FLAGS = {
    "teacher": ("--model", "--epochs", "--augment", "--export_dir", "--backup_dir"),
    "student": ("--teacher_dir", "--temperature", "--alpha", "--teacher_logits", "--logits_cache"),
    "scratch": ("--model", "--augment_views"),
    "compare": ("--teacher_flagfile", "--student_flagfile", "--scratch_flagfile"),
    "tune": ("--tune_dir", "--max_trials", "--tuner"),
    "predict": ("--model_dir", "--images", "--test_index", "--output_image"),
    "tflite": ("--tflite_path", "--quantize"),
}


class HelpTest(tf.test.TestCase):
    def test_help_shows_every_stage_its_flag_files_and_main_flags(self):
        ((_, usage, stderr),) = helpers.run_kd_tf(["--help"])
        # absl's --help exits with status 1 after the usage text, on stdout.
        self.assertNotIn("Traceback", stderr)
        self.assertIn("python -m kd_tf.main --flagfile=flags/", usage)
        for path in sorted(glob.glob(os.path.join(helpers.REPO, "flags", "*.cfg"))):
            self.assertIn(f"flags/{os.path.basename(path)}", usage)
        for stage, flags in STAGE_FLAGS.items():
            with self.subTest(stage=stage):
                self.assertIn(f"--stage={stage}", usage)
                for flag in flags:
                    self.assertRegex(usage, f"{flag}\\b")
        self.assertIn("--helpfull", usage)

    def test_help_and_flag_errors_do_not_import_tensorflow(self):
        # Answered in a fraction of a second: importing TensorFlow alone takes
        # 7 to 8 s of CPU time on a 2-core AVX2 machine (`kd_tf.choices`).
        for argv in (["--help"], ["--helpfull"], ["--stage=student", "--temperature=0"]):
            with self.subTest(argv=argv):
                process = helpers.start_kd_tf(argv, env={"PYTHONPROFILEIMPORTTIME": "1"})
                _, stderr = process.communicate(timeout=helpers.PROCESS_TIMEOUT)
                self.assertEqual(process.returncode, 1, stderr[-3000:])
                imported = {
                    line.rsplit("|", 1)[-1].strip()
                    for line in stderr.splitlines()
                    if line.startswith("import time:")
                }
                self.assertIn("kd_tf.command_line", imported)
                self.assertEmpty(imported & {"tensorflow", "keras"})


@pytest.mark.slow
class EpochLogTest(tf.test.TestCase):
    def test_one_line_per_epoch_and_no_tensorflow_error_lines(self):
        root = tempfile.mkdtemp(dir=self.get_temp_dir())
        ((status, stdout, stderr),) = helpers.run_kd_tf(
            [
                "--flagfile=flags/teacher.cfg",
                # The flag file's data, augmentation and determinism; a small
                # model, as the 10,000 test images are measured every epoch.
                f"--model={helpers.TEACHER_MODEL}",
                "--train_examples=512",
                "--validation_examples=256",
                "--epochs=2",
                "--monitor_test",
                f"--export_dir={root}/teacher",
                f"--log_dir={root}/logs",
            ]
        )
        self.assertEqual(status, 0, stderr[-3000:])
        self.assertNotIn("NodeDef mentions attribute", stderr)
        self.assertNotIn("Epoch 1/2", stdout)
        self.assertNotIn("/step", stdout)
        lines = [line for line in stderr.splitlines() if re.search(r"\] epoch \d", line)]
        self.assertLen(lines, 2, stderr[-3000:])
        for epoch, line in enumerate(lines, 1):
            self.assertRegex(
                line,
                f"epoch {epoch}/2: train [0-9.]+ s, validation [0-9.]+ s; loss [0-9.]+, "
                "accuracy [0-9.]+, val_loss [0-9.]+, val_accuracy [0-9.]+, "
                "test_loss [0-9.]+, test_accuracy [0-9.]+$",
            )


class InterruptedCleanUpTest(tf.test.TestCase):
    def test_an_error_raised_while_ctrl_c_unwinds_is_the_ctrl_c(self):
        # As TensorFlow's tracing did when Ctrl-C came in the middle of it:
        # its clean-up failed an assertion, which replaced the interrupt.
        with self.assertRaises(interrupts.Interrupted) as caught:
            with interrupts.catching_interrupts(), interrupts.outcome("nothing written"):
                try:
                    signal.raise_signal(signal.SIGINT)
                except KeyboardInterrupt:
                    raise AssertionError  # the clean-up's own failure
        self.assertEqual(caught.exception.outcome, "nothing written")
        with self.assertRaises(AssertionError), interrupts.catching_interrupts():
            raise AssertionError  # without Ctrl-C, an error stays what it is


@pytest.mark.slow
class CtrlCTest(tf.test.TestCase):
    """Defect 6: after Ctrl-C the line says what was written and what was not."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()
        cls.teacher_dir = helpers.tiny_export(os.path.join(cls.root, "teacher"))

    def interrupted(self, *argv):
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = main.run_command([*SMALL_RUN, f"--log_dir={self.root}/logs", *argv])
        self.assertNotIn("Traceback", stderr.getvalue())
        self.assertEqual(status, main.EXIT_INTERRUPTED, stderr.getvalue()[-2000:])
        lines = [line for line in stderr.getvalue().splitlines() if line.startswith("kd_tf:")]
        self.assertLen(lines, 1)
        return lines[0]

    def test_after_the_export_is_in_place(self):
        export_dir = os.path.join(self.root, "scratch")
        with mock.patch.object(backup, "remove", side_effect=KeyboardInterrupt):
            line = self.interrupted("--stage=scratch", f"--export_dir={export_dir}")
        self.assertEqual(line, f"kd_tf: interrupted: the export is complete at {export_dir}")
        export.load_serving_model(export_dir)

    def test_during_a_search(self):
        tune_dir = os.path.join(self.root, "tune")
        with mock.patch.object(tuning, "search", side_effect=KeyboardInterrupt):
            line = self.interrupted(
                "--stage=tune", f"--teacher_dir={self.teacher_dir}", f"--tune_dir={tune_dir}",
                "--min_teacher_accuracy=0",  # an untrained teacher
            )
        self.assertEqual(
            line,
            f"kd_tf: interrupted: the search state is kept in {tune_dir}: rerun the same "
            "command to resume it",
        )

    def test_compare_after_its_teacher(self):
        saved_models = os.path.join(self.root, "compare_runs")
        with mock.patch.dict(
            stages.REGISTRY, {"student": mock.Mock(side_effect=KeyboardInterrupt)}
        ):
            line = self.interrupted(
                "--stage=compare",
                *(
                    f"--{s}_flagfile={helpers.REPO}/flags/{s}.cfg"
                    for s in ("teacher", "student", "scratch")
                ),
                f"--saved_models_dir={saved_models}",
                f"--export_dir={self.root}/compare",
            )
        teacher = os.path.join(saved_models, "teacher", "1")
        self.assertEqual(
            line,
            "kd_tf: interrupted: student run: no partial export was written; "
            f"finished: teacher at {teacher}",
        )
        export.load_serving_model(teacher)
        self.assertFalse(os.path.exists(f"{self.root}/compare"))

    def test_predict_and_tflite(self):
        grid = os.path.join(self.root, "grid.png")
        with mock.patch.object(inference, "save_grid", side_effect=KeyboardInterrupt):
            line = self.interrupted(
                "--stage=predict",
                f"--model_dir={self.teacher_dir}",
                "--test_index=0",
                f"--output_image={grid}",
            )
        self.assertEqual(line, f"kd_tf: interrupted: {grid} was not written")
        tflite = os.path.join(self.root, "model.tflite")
        argv = ("--stage=tflite", f"--model_dir={self.teacher_dir}", f"--tflite_path={tflite}")
        with mock.patch.object(lite, "_measure", side_effect=KeyboardInterrupt):
            line = self.interrupted(*argv)
        self.assertEqual(line, f"kd_tf: interrupted: {tflite} was not written")
        self.assertFalse(os.path.exists(tflite))
        with mock.patch.object(reporting, "write_json", side_effect=KeyboardInterrupt):
            line = self.interrupted(*argv)
        self.assertEqual(
            line,
            f"kd_tf: interrupted: {tflite} and its labels are complete, its report was not written",
        )
        self.assertTrue(os.path.exists(tflite))

    def test_while_the_replaced_export_is_deleted(self):
        target = helpers.tiny_export(os.path.join(self.root, "replaced"))
        rmtree = shutil.rmtree

        def interrupted_while_deleting_the_old_export(path, *args, **kwargs):
            if os.path.basename(path).startswith(".replaced.tmp-"):
                raise KeyboardInterrupt
            return rmtree(path, *args, **kwargs)

        with (
            mock.patch.object(
                atomic.shutil, "rmtree", side_effect=interrupted_while_deleting_the_old_export
            ),
            self.assertRaises(interrupts.Interrupted) as caught,
        ):
            helpers.tiny_export(target, overwrite=True)
        self.assertRegex(
            caught.exception.outcome,
            f"^the new output is complete at {re.escape(target)}; the old one may remain in "
            f"{re.escape(self.root)}/\\.replaced\\.tmp-",
        )
        export.load_serving_model(target)


class LiteRTTest(tf.test.TestCase):
    def test_tflite_files_run_in_litert_not_tf_lite(self):
        model_dir = helpers.tiny_export(os.path.join(self.get_temp_dir(), "model"))
        content = lite.convert(model_dir)
        images = np.random.default_rng(0).integers(0, 256, (300, 28, 28, 1), dtype=np.uint8)
        with mock.patch.object(tf.lite, "Interpreter", side_effect=AssertionError("tf.lite")):
            logits = lite.tflite_logits(content, images, batch_size=128)
        served = export.load_serving_model(model_dir)
        self.assertAllClose(logits, served.predict_logits(images), atol=1e-4)


if __name__ == "__main__":
    tf.test.main()
