"""The on-disk logits (`--logits_cache=disk`) never outlive their run.

Defect 3: the file is removed on every path, and the file of a killed run by
the next run. (That the training stream over them is a function of the seed
alone, defect 2, is tested in tests/test_streaming.py.)
"""

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from unittest import mock

import helpers
import keras
import tensorflow as tf

from kd_tf import data, export, logits_cache, main, models, training

def _teacher(directory, images):
    keras.utils.set_random_seed(0)
    model = models.build_model("compact_cnn", (28, 28, 1), 10)
    return export.export_model(model, os.path.join(directory, "teacher"), check_images=images[:8])


def _student_argv(root, teacher_dir, cache_dir, *argv):
    return [
        "--stage=student",
        f"--teacher_dir={teacher_dir}",
        "--teacher_logits=cached",
        "--min_teacher_accuracy=0",  # an untrained teacher: its logits are what is tested
        "--logits_cache=disk",
        f"--logits_cache_dir={cache_dir}",
        "--train_examples=256",
        "--validation_examples=128",
        "--batch_size=64",
        f"--log_dir={root}/logs",
        f"--saved_models_dir={root}/saved_models",
        *argv,
    ]


class ShardLifetimeTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()
        cls.teacher_dir = _teacher(cls.root, data.read_packaged_mnist()[1].images)

    def setUp(self):
        super().setUp()
        self.cache_dir = tempfile.mkdtemp(dir=self.root)

    def run_command(self, *argv):
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = main.run_command(
                _student_argv(self.root, self.teacher_dir, self.cache_dir, *argv)
            )
        return status, stderr.getvalue()

    def test_shards_are_removed_on_every_path(self):
        status, _ = self.run_command("--epochs=1")
        self.assertEqual(status, 0)
        self.assertEqual(os.listdir(self.cache_dir), [], "after success")
        status, _ = self.run_command("--epochs=2", "--learning_rate=1e12", "--lr_schedule=constant")
        self.assertEqual(status, main.EXIT_USER_ERROR)
        self.assertEqual(os.listdir(self.cache_dir), [], "after a diverged run")
        for error, status in (
            (KeyboardInterrupt(), main.EXIT_INTERRUPTED),
            (RuntimeError("bug"), None),
        ):
            with (
                self.subTest(error=type(error).__name__),
                mock.patch.object(training, "fit_and_restore_best", side_effect=error),
                contextlib.ExitStack() as stack,
            ):
                if status is None:
                    stack.enter_context(self.assertRaisesRegex(RuntimeError, "bug"))
                got, _ = self.run_command("--epochs=1")
                self.assertEqual(got, status)
            self.assertEqual(os.listdir(self.cache_dir), [], f"after {type(error).__name__}")

    def test_shards_of_a_killed_run_are_removed_by_the_next_run(self):
        process = helpers.start_kd_tf(
            _student_argv(self.root, self.teacher_dir, self.cache_dir, "--epochs=500")
        )
        self.addCleanup(process.kill)
        started = time.monotonic()
        for line in process.stderr:
            if "training: 500 epochs" in line:
                break
            self.assertLess(time.monotonic() - started, 120, "training did not start")
        (killed,) = os.listdir(self.cache_dir)
        self.assertTrue(os.listdir(os.path.join(self.cache_dir, killed)), "shards were written")
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.assertEqual(os.listdir(self.cache_dir), [killed], "SIGKILL leaves the shards")

        status, stderr = self.run_command("--epochs=1")
        self.assertEqual(status, 0, stderr[-2000:])
        self.assertEqual(os.listdir(self.cache_dir), [], "the next run removed them")

    def test_the_shards_of_a_live_run_are_kept(self):
        alive = subprocess.Popen(
            [
                sys.executable,
                "-c",
                (
                    "import sys; from kd_tf import logits_cache\n"
                    f"shards = logits_cache.ShardDirectory({self.cache_dir!r})\n"
                    "print(shards.path, flush=True); sys.stdin.read()"
                ),
            ],
            cwd=helpers.REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(alive.kill)
        alive_path = alive.stdout.readline().strip()
        self.assertTrue(os.path.isdir(alive_path), alive_path)
        with logits_cache.ShardDirectory(self.cache_dir) as mine:
            self.assertCountEqual(
                os.listdir(self.cache_dir),
                [os.path.basename(alive_path), os.path.basename(mine.path)],
            )
        self.assertEqual(os.listdir(self.cache_dir), [os.path.basename(alive_path)])
        alive.communicate("", timeout=60)
        self.assertEqual(os.listdir(self.cache_dir), [], "its owner removed it on exit")


if __name__ == "__main__":
    tf.test.main()
