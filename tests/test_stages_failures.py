"""End to end: failures during a run on a slice of real MNIST lose nothing
(docs/reliability.md: What happens when ... and Surviving a crash).

`TrainingFailureTest` runs `main.run_command` in process; `ProcessFailureTest`
interrupts real `python -m kd_tf.main` processes (SIGINT, SIGKILL).
"""

import errno
import json
import os
import re
import signal
import time
from unittest import mock

import helpers
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import command_line, export, stages
from kd_tf.export import writing


@pytest.mark.usefixtures("class_root")
class TrainingFailureTest(helpers.CommandTestCase):
    def test_diverging_run_exports_nothing(self):
        parent = os.path.join(self.root, "diverged")
        line = self.assert_refused(
            (
                "--stage=scratch",
                "--epochs=3",
                "--learning_rate=1e12",
                "--lr_schedule=constant",
                f"--export_dir={parent}/1",
            ),
            2,
            "training diverged at epoch 1 \\(loss nan at step \\d+\\): lower --learning_rate",
        )
        self.assertIn("nothing was exported", line)
        self.assertFalse(os.path.exists(parent) and os.listdir(parent))

    def test_overwrite_replaces_an_export(self):
        target = export.export_model(
            helpers.tiny_model(),
            os.path.join(self.root, "replaced", "1"),
            check_images=helpers.random_images(8),
        )
        before = helpers.snapshot(target)
        self.assert_refused(("--stage=scratch", f"--export_dir={target}"), 2, "--overwrite")
        full_disk = helpers.failing_writer(OSError(errno.ENOSPC, "No space left on device"))
        with mock.patch.object(writing, "_write_saved_model", side_effect=full_disk):
            self.assert_refused(
                ("--stage=scratch", f"--export_dir={target}", "--overwrite"),
                2,
                f"could not write {re.escape(target)} \\(No space left on device\\): free",
            )
        self.assertEqual(helpers.snapshot(target), before)
        self.assertEqual(os.listdir(os.path.dirname(target)), ["1"], "no debris")
        status, _ = self.run_command("--stage=scratch", f"--export_dir={target}", "--overwrite")
        self.assertEqual(status, 0)
        report = helpers.read_report(target)
        self.assertEqual((report["stage"], report["model"]), ("scratch", "seed_mlp"))
        served = export.load_serving_model(target)
        self.assertEqual(served.predict_logits(helpers.random_images(8)).shape, (8, 10))
        self.assertEqual(os.listdir(os.path.dirname(target)), ["1"], "no debris")


# seed_mlp (no dropout, no batch norm) gains validation accuracy every epoch
# here (0.932, 0.953, 0.968), so the exported best epoch, 3, is trained after
# the resume; 256 steps an epoch leave time to kill during epoch 2.
RESUMABLE_RUN = (
    "--stage=scratch",
    "--model=seed_mlp",
    "--strategy=default",
    "--epochs=3",
    "--train_examples=8192",
    "--validation_examples=1024",
    "--batch_size=32",
    "--lr_schedule=constant",
)


@pytest.mark.slow
@pytest.mark.usefixtures("class_root")
class ProcessFailureTest(tf.test.TestCase):
    def test_ctrl_c_during_training(self):
        parent = os.path.join(self.root, "interrupted")
        process = helpers.start_kd_tf(
            helpers.slice_argv(
                self.root,
                "--stage=teacher",
                "--model=seed_cnn",
                "--epochs=100",
                "--train_examples=2048",
                f"--export_dir={parent}/1",
            )
        )
        self.addCleanup(process.kill)
        helpers.read_until(process, "training: 100 epochs")
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=helpers.PROCESS_TIMEOUT)
        self.assertEqual(process.returncode, 130, stderr[-2000:])
        # It stops within the epoch under way: at most that one ends after the signal.
        self.assertLessEqual(len(re.findall(r"\] epoch \d+/100", stderr)), 1, stderr[-2000:])
        self.assertNotIn("Traceback", stderr)
        self.assertEqual(
            helpers.kd_tf_lines(stderr), ["kd_tf: interrupted: no partial export was written"]
        )
        self.assertFalse(os.path.exists(parent) and os.listdir(parent))

    def _run_dirs(self, name):
        """`(argv, its directory)` of a `RESUMABLE_RUN` writing under `<root>/<name>`."""
        run_dir = os.path.join(self.root, name)
        return [
            *RESUMABLE_RUN,
            f"--log_dir={run_dir}/logs",
            f"--backup_dir={run_dir}/backup",
            f"--export_dir={run_dir}/export",
        ], run_dir

    def _kill_after_an_epoch(self, argv, run_dir):
        """Starts `argv` (stderr into `<run_dir>/run.log`) and SIGKILLs it once
        an epoch is backed up; returns the finished epochs the backup records."""
        metadata = os.path.join(run_dir, "backup", "scratch", "training_metadata.json")
        os.makedirs(run_dir)
        with open(os.path.join(run_dir, "run.log"), "w") as log:
            process = helpers.start_kd_tf(argv, stderr=log)
        self.addCleanup(process.kill)
        deadline = time.monotonic() + helpers.PROCESS_TIMEOUT
        while not os.path.exists(metadata) and process.poll() is None:
            self.assertLess(time.monotonic(), deadline, "no epoch finished in time")
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        with open(metadata) as f:
            return json.load(f)["epoch"]

    def test_killed_run_resumes(self):
        """A run SIGKILLed during epoch 2 and started again resumes after
        epoch 1 and ends as an uninterrupted run does: the same per-epoch
        records and bitwise the same exported weights."""
        argv, run_dir = self._run_dirs("killed")
        reference_argv, reference_dir = self._run_dirs("reference")
        finished = self._kill_after_an_epoch(argv, run_dir)
        self.assertIn(finished, (1, 2), "killed during epoch 2 or 3, not after the run")
        self.assertEqual(
            sorted(os.listdir(run_dir)), ["backup", "logs", "run.log"], "no export, no debris"
        )

        log = os.path.join(run_dir, "resumed.log")
        with open(log, "w") as f:
            resumed = helpers.start_kd_tf(argv, stderr=f)
        self.addCleanup(resumed.kill)
        stages.run(command_line.parse(reference_argv))  # meanwhile, uninterrupted, in process
        status = helpers.wait_all([resumed])
        with open(log) as f:
            self.assertEqual(status, [0], f.read()[-3000:])
        report = helpers.read_report(f"{run_dir}/export")
        self.assertEqual(report["resumed_from_epoch"], finished)
        self.assertFalse(os.path.exists(os.path.join(run_dir, "backup", "scratch")))

        expected = helpers.read_report(f"{reference_dir}/export")
        self.assertEqual(expected["resumed_from_epoch"], 0)
        self.assertLen(report["epochs"], 3)
        self.assertEqual(report["best_epoch"], expected["best_epoch"])
        self.assertGreater(report["best_epoch"], finished, "the export is trained after the resume")
        for got, want in zip(report["epochs"], expected["epochs"]):
            self.assertEqual(got["epoch"], want["epoch"])
            self.assertAllClose(got["val_accuracy"], want["val_accuracy"], atol=1e-6)
        self.assertAllClose(report["test_accuracy"], expected["test_accuracy"], atol=0.002)
        weights = helpers.exported_variables(f"{run_dir}/export")
        expected_weights = helpers.exported_variables(f"{reference_dir}/export")
        self.assertCountEqual(weights, expected_weights)
        for name, value in expected_weights.items():
            self.assertTrue(np.array_equal(weights[name], value), name)
