"""The on-disk logits stream (`--logits_cache=disk`): a function of the seed and
the epoch alone, and shards that never outlive their run.

Defect 2: every iterator (each keras-tuner trial, a resumed run, Keras's extra
iterator under a strategy) must see the same batches. Defect 3: the shards are
removed on every path, and the shards of a killed run by the next run.
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
import numpy as np
import tensorflow as tf

from kd_tf import data, export, logits_cache, main, models, training

SHAPE = {"image_shape": (28, 28, 1), "num_classes": 10}
EXAMPLES = 1000
BATCH = 100


def _arrays(dataset, batches):
    """`(images, logits, labels)` of the first `batches` batches of a new iterator."""
    parts = list(dataset.take(batches).as_numpy_iterator())
    return (
        np.concatenate([p[0][0] for p in parts]),
        np.concatenate([p[0][1] for p in parts]),
        np.concatenate([p[1] for p in parts]),
    )


def _teacher(directory, images):
    keras.utils.set_random_seed(0)
    model = models.build_model("compact_cnn", (28, 28, 1), 10)
    return export.export_model(model, os.path.join(directory, "teacher"), check_images=images[:8])


class SeedOnlyStreamTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp()
        splits = data.load_splits(
            "mnist",
            "packaged",
            validation_examples=100,
            train_examples=EXAMPLES,
            tfds_data_dir=None,
            idx_dir=None,
        )
        cls.images, cls.labels = splits.train.images, splits.train.labels
        cls.teacher = export.load_serving_model(_teacher(cls.tmp, cls.images))
        # 256 examples a shard: 4 shards, and a shuffle window smaller than a pass.
        with mock.patch.object(logits_cache, "EXAMPLES_PER_SHARD", 256):
            cls.shards = logits_cache.write_shards(
                cls.teacher, cls.images, cls.labels, os.path.join(cls.tmp, "shards"), batch_size=64
            )
        assert len(cls.shards) == 4

    def stream(self, seed=3):
        with mock.patch.object(logits_cache, "SHUFFLE_BUFFER", 300):
            return logits_cache.training_stream(self.shards, BATCH, seed=seed, **SHAPE)

    def positions(self, images):
        index = {image.tobytes(): i for i, image in enumerate(self.images)}
        return np.array([index[image.tobytes()] for image in images])

    def test_two_iterators_see_the_same_batches(self):
        stream = self.stream()
        first = _arrays(stream, 30)
        second = _arrays(stream, 30)
        for one, two in zip(first, second):
            self.assertAllEqual(one, two)
        # And a stream built again from the same seed.
        self.assertAllEqual(_arrays(self.stream(), 30)[0], first[0])
        self.assertNotAllEqual(_arrays(self.stream(seed=4), 30)[0], first[0])

    def test_a_resumed_run_continues_with_the_same_batches(self):
        stream = self.stream()
        whole = _arrays(stream, 30)
        # A run resumed after epoch 1 (10 batches) skips them on a new iterator.
        resumed = _arrays(stream.skip(10), 20)
        for one, two in zip(whole, resumed):
            self.assertAllEqual(one[10 * BATCH :], two)

    def test_each_epoch_is_another_permutation_of_every_example(self):
        images, logits, labels = _arrays(self.stream(), 30)
        positions = self.positions(images)
        self.assertAllEqual(labels, self.labels[positions])
        self.assertAllEqual(logits, self.teacher.predict_logits(self.images)[positions])
        epochs = positions.reshape(3, EXAMPLES)
        for epoch in epochs:
            self.assertAllEqual(np.sort(epoch), np.arange(EXAMPLES))
        self.assertNotAllEqual(epochs[0], epochs[1])
        self.assertNotAllEqual(epochs[1], epochs[2])
        self.assertNotAllEqual(epochs[0], np.arange(EXAMPLES))

    def test_two_trials_on_one_stream_train_alike(self):
        """keras-tuner fits every trial on the same dataset object."""
        stream = self.stream()
        histories = []
        for _ in range(2):
            keras.utils.set_random_seed(0)
            model = models.build_model("seed_mlp", (28, 28, 1), 10)
            model.compile(
                optimizer="adam",
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            only_images = stream.map(lambda features, labels: (features[0], labels))
            history = model.fit(only_images, epochs=2, steps_per_epoch=10, verbose=0)
            histories.append(history.history["loss"])
        self.assertAllEqual(histories[0], histories[1])


def _student_argv(root, teacher_dir, cache_dir, *argv):
    return [
        "--stage=student",
        f"--teacher_dir={teacher_dir}",
        "--teacher_logits=cached",
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
