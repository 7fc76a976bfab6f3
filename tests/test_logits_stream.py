"""The on-disk logits (`--logits_cache=disk`) never outlive their run.

Defect 3: the file is removed on every path, and the file of a killed run by
the next run. (That the training stream over them is a function of the seed
alone, defect 2, is tested in tests/test_streaming.py.)
"""

import contextlib
import io
import os
import signal
import tempfile
from unittest import mock

import helpers
import pytest
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


@pytest.mark.slow
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

    def test_shards_of_a_live_run_are_kept_and_of_a_killed_run_removed(self):
        process = helpers.start_kd_tf(
            _student_argv(self.root, self.teacher_dir, self.cache_dir, "--epochs=500")
        )
        self.addCleanup(process.kill)
        helpers.read_until(process, "training: 500 epochs")
        (live,) = os.listdir(self.cache_dir)
        self.assertTrue(os.listdir(os.path.join(self.cache_dir, live)), "shards were written")
        # Another run's directory (this process's) removes no live run's shards.
        with logits_cache.ShardDirectory(self.cache_dir) as mine:
            self.assertCountEqual(os.listdir(self.cache_dir), [live, os.path.basename(mine.path)])
        self.assertEqual(os.listdir(self.cache_dir), [live])
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.assertEqual(os.listdir(self.cache_dir), [live], "SIGKILL leaves the shards")

        status, stderr = self.run_command("--epochs=1")
        self.assertEqual(status, 0, stderr[-2000:])
        self.assertEqual(os.listdir(self.cache_dir), [], "the next run removed them")

    def test_a_directory_left_open_is_removed_with_its_object(self):
        # (weakref.finalize: also when the interpreter exits.)
        shards = logits_cache.ShardDirectory(self.cache_dir)
        path = shards.path
        del shards
        self.assertFalse(os.path.exists(path))
        self.assertEqual(os.listdir(self.cache_dir), [])


if __name__ == "__main__":
    tf.test.main()
