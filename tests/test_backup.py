"""Backups (`--backup_dir`) that survive a diverged epoch, a changed command and
a kill at any instant of their writing.

`training.fit_and_restore_best` is run directly on a `seed_mlp` and 128 MNIST
images with a constant learning rate, so that the first epochs of a 3-epoch run
are a 2-epoch run; a resumed run must end with the records and weights of the
run that was never interrupted. The command-line cases go through
`kd_tf.main.run_command`.
"""

import contextlib
import hashlib
import io
import os
import shutil
import sys
import tempfile
from unittest import mock

import helpers
import keras
import numpy as np
import tensorflow as tf

from kd_tf import backup, data, determinism, export, main, models, pipelines, reporting, training
from kd_tf.errors import UserError

STEPS = 4
BATCH = 32
SMALL_RUN = ("--train_examples=256", "--validation_examples=256", "--batch_size=64")
# Audit events that change files (see `_KillPoints`).
_CHANGES = {"os.rename", "os.remove", "os.link", "os.truncate", "shutil.copyfile", "shutil.rmtree"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _files(directory):
    """`{relative path: bytes}` of every file under `directory`."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


def _digest(files):
    return hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()


class _KillPoints:
    """Copies of a directory taken just before each change to a file in it
    while `active`: what a SIGKILL at that instant would leave behind.

    Uses a process-wide audit hook (`sys.addaudithook`, which cannot be
    removed; it does nothing once `active` is off)."""

    def __init__(self, directory):
        self.directory = os.path.abspath(directory)
        self.active = False
        self.copies = {}
        self._busy = False
        sys.addaudithook(self._hook)

    def _touches(self, event, args):
        if event == "open":
            path, _, flags = args
            if not isinstance(path, (str, bytes, os.PathLike)) or not flags & _WRITE_FLAGS:
                return False
            paths = [path]
        elif event in _CHANGES:
            paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return False
        return any(os.path.abspath(os.fsdecode(p)).startswith(self.directory) for p in paths)

    def _hook(self, event, args):
        if not self.active or self._busy or not self._touches(event, args):
            return
        self._busy = True
        try:
            if os.path.isdir(self.directory):
                files = _files(self.directory)
                self.copies.setdefault(_digest(files), files)
        finally:
            self._busy = False


def _restore(files, directory):
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    for name, content in files.items():
        os.makedirs(os.path.dirname(os.path.join(directory, name)), exist_ok=True)
        with open(os.path.join(directory, name), "wb") as f:
            f.write(content)


class _FitTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()
        cls.splits = data.load_splits(
            "mnist",
            "packaged",
            validation_examples=64,
            train_examples=128,
            tfds_data_dir=None,
            idx_dir=None,
        )
        cls.reference = cls._fit(None, epochs=3)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    @classmethod
    def _fit(cls, backup_dir, epochs):
        """`(epoch records, best epoch, final weights)` of a seeded run."""
        determinism.make_reproducible(0, deterministic=True)
        splits = cls.splits
        model = models.build_model("seed_mlp", splits.image_shape, splits.num_classes)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        records, best_epoch = training.fit_and_restore_best(
            model,
            pipelines.training_dataset(splits.train, BATCH, seed=0),
            pipelines.evaluation_dataset(splits.validation, 64),
            epochs=epochs,
            steps_per_epoch=STEPS,
            log_dir=os.path.join(cls.root, "logs"),
            backup_dir=backup_dir,
        )
        return records, best_epoch, model.get_weights()

    def assert_like_the_reference(self, result):
        records, best_epoch, weights = result
        want_records, want_best, want_weights = self.reference
        self.assertLen(records, len(want_records))
        for got, want in zip(records, want_records):
            for key in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy"):
                self.assertAllClose(
                    got[key], want[key], atol=1e-6, msg=f"epoch {want['epoch']} {key}"
                )
        self.assertEqual(best_epoch, want_best)
        for got, want in zip(weights, want_weights):
            self.assertAllClose(got, want, atol=1e-6)


class ConsistentBackupTest(_FitTest):
    """Defect 5: the epoch record is consistent at every instant, a damaged one
    falls back to the epoch before, and the stream skips what was restored."""

    def test_a_kill_at_any_write_of_an_epoch_resumes_as_the_uninterrupted_run(self):
        backup_dir = os.path.join(self.root, "killed")
        kills = _KillPoints(backup_dir)
        record_epoch = training.EpochRecorder.on_epoch_end

        def record_then_watch(recorder, epoch, logs=None):
            record_epoch(recorder, epoch, logs)
            # Epoch 2's backup is being written until epoch 3 ends.
            kills.active = epoch == 1

        with mock.patch.object(training.EpochRecorder, "on_epoch_end", record_then_watch):
            self._fit(backup_dir, epochs=3)
        kills.active = False
        self.assertGreaterEqual(
            len(kills.copies), 2, "the backup of epoch 2 was seen being written"
        )
        resumed_epochs = set()
        for files in kills.copies.values():
            copy = os.path.join(self.root, "copy")
            _restore(files, copy)
            resumed_epochs.add(backup.resumed_epoch(copy))
            with self.subTest(files=sorted(files)):
                self.assert_like_the_reference(self._fit(copy, epochs=3))
        self.assertEqual(resumed_epochs, {1, 2})

    def test_an_emptied_record_falls_back_to_the_epoch_before(self):
        backup_dir = os.path.join(self.root, "emptied")
        self._fit(backup_dir, epochs=2)
        with open(os.path.join(backup_dir, "training_metadata.json"), "w"):
            pass
        self.assertEqual(backup.resumed_epoch(backup_dir), 1)
        self.assert_like_the_reference(self._fit(backup_dir, epochs=3))

    def test_a_backup_without_a_complete_record_starts_over(self):
        backup_dir = os.path.join(self.root, "keras_format")
        os.makedirs(backup_dir)
        # What kd_tf wrote before its own records: Keras's metadata alone.
        with open(os.path.join(backup_dir, "training_metadata.json"), "w") as f:
            f.write('{"epoch": 2, "batch": 0}')
        self.assertEqual(backup.resumed_epoch(backup_dir), 0)
        self.assert_like_the_reference(self._fit(backup_dir, epochs=3))

    def test_a_damaged_weights_file_falls_back_and_the_stream_follows(self):
        backup_dir = os.path.join(self.root, "damaged")
        self._fit(backup_dir, epochs=2)
        weights = [
            os.path.join(backup_dir, name)
            for name in os.listdir(backup_dir)
            if name.endswith(".weights.h5")
        ]
        newest = max(weights, key=os.path.getmtime)
        with open(newest, "r+b") as f:
            f.truncate(os.path.getsize(newest) // 2)
        self.assertEqual(backup.resumed_epoch(backup_dir), 1)
        self.assert_like_the_reference(self._fit(backup_dir, epochs=3))


def _float_stream(nan_from_step):
    """An endless stream of float features `[8, 4]` and labels, NaN from
    step `nan_from_step` on."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 8, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=(64, 8))

    def batch(step):
        x = tf.gather(features, step % 64)
        return tf.where(step >= nan_from_step, tf.fill(tf.shape(x), np.nan), x), tf.gather(
            labels, step % 64
        )

    return tf.data.Dataset.counter().map(batch)


class DivergedEpochTest(tf.test.TestCase):
    """Defect 1: a diverged epoch is never backed up."""

    def _fit(self, backup_dir, nan_from_step):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        training.fit_and_restore_best(
            model,
            _float_stream(nan_from_step),
            _float_stream(10**9).take(2),
            epochs=3,
            steps_per_epoch=STEPS,
            log_dir=os.path.join(self.get_temp_dir(), "logs"),
            backup_dir=backup_dir,
        )
        return model

    def test_the_backup_keeps_the_last_finite_epoch(self):
        backup_dir = os.path.join(self.get_temp_dir(), "diverged")
        with self.assertRaisesRegex(
            UserError,
            "training diverged at epoch 2 .*; nothing was exported; .* keeps epochs 1-1 of "
            "this run: remove it before rerunning with another learning_rate",
        ):
            self._fit(backup_dir, nan_from_step=STEPS)
        self.assertEqual(backup.resumed_epoch(backup_dir), 1)
        resumed = self._fit(backup_dir, nan_from_step=10**9)
        for weight in resumed.get_weights():
            self.assertTrue(np.isfinite(weight).all())


class _CommandLineTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.root = tempfile.mkdtemp(dir=self.get_temp_dir())
        self.backup_dir = os.path.join(self.root, "backup")

    def run_command(self, *argv):
        """`(status, kd_tf lines on stderr)`; never a traceback."""
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = main.run_command(
                [
                    *SMALL_RUN,
                    f"--log_dir={self.root}/logs",
                    f"--backup_dir={self.backup_dir}",
                    *argv,
                ]
            )
        self.assertNotIn("Traceback", stderr.getvalue())
        return status, [
            line for line in stderr.getvalue().splitlines() if line.startswith("kd_tf:")
        ]

    def report(self, export_dir):
        return reporting.read_json(os.path.join(export_dir, export.ASSETS_EXTRA, "report.json"))


class DivergedRunTest(_CommandLineTest):
    def test_the_recommended_rerun_starts_from_scratch(self):
        status, lines = self.run_command(
            "--stage=scratch",
            "--epochs=2",
            "--learning_rate=1e12",
            "--lr_schedule=constant",
            f"--export_dir={self.root}/diverged",
        )
        self.assertEqual(status, 2, lines)
        self.assertRegex(lines[0], "training diverged at epoch 1 .*lower --learning_rate")
        self.assertEqual(backup.resumed_epoch(os.path.join(self.backup_dir, "scratch")), 0)
        status, lines = self.run_command(
            "--stage=scratch", "--epochs=2", "--learning_rate=1e-3", f"--export_dir={self.root}/1"
        )
        self.assertEqual(status, 0, lines)
        report = self.report(f"{self.root}/1")
        self.assertEqual(report["resumed_from_epoch"], 0)
        self.assertTrue(all(np.isfinite(epoch["loss"]) for epoch in report["epochs"]))
        self.assertGreater(report["test_accuracy"], 0.15)  # 0.1 by chance


class RunFieldsTest(_CommandLineTest):
    """Defects 1 and 4: a backup records the fields that define its run; a
    rerun with other values is refused in one line naming them."""

    def test_a_rerun_of_another_run_is_refused_and_the_same_one_resumes(self):
        argv = ("--stage=scratch", "--epochs=3", f"--export_dir={self.root}/1")
        with mock.patch.object(export, "export_model", side_effect=KeyboardInterrupt):
            status, lines = self.run_command(*argv)
        self.assertEqual(status, main.EXIT_INTERRUPTED, lines)
        scratch_backup = os.path.join(self.backup_dir, "scratch")
        self.assertEqual(backup.resumed_epoch(scratch_backup), 3)
        before = _files(scratch_backup)
        cases = {
            ("--model=compact_cnn",): "--model=seed_mlp there, compact_cnn here",
            ("--learning_rate=0.01",): "--learning_rate=0.001 there, 0.01 here",
            (
                "--seed=1",
                "--batch_size=32",
            ): "--batch_size=64 there, 32 here; --seed=0 there, 1 here",
        }
        for changed, differences in cases.items():
            with self.subTest(changed=changed):
                status, lines = self.run_command(*argv, *changed)
                self.assertEqual(status, main.EXIT_USER_ERROR, lines)
                self.assertLen(lines, 1)
                self.assertStartsWith(
                    lines[0],
                    f"kd_tf: error: --backup_dir {scratch_backup} holds a backup of another run "
                    f"({differences}): rerun with the same flags to resume it, or remove",
                )
                self.assertEqual(_files(scratch_backup), before, "the backup is kept")
        status, lines = self.run_command(*argv)
        self.assertEqual(status, 0, lines)
        self.assertEqual(self.report(f"{self.root}/1")["resumed_from_epoch"], 3)
        self.assertFalse(os.path.exists(scratch_backup))


class DataFingerprintTest(_CommandLineTest):
    """A backup resumes only a run on the same data: an image added to a
    class folder (same flags) makes another run."""

    def test_a_rerun_on_changed_folders_is_refused(self):
        tree = helpers.write_mnist_tree(os.path.join(self.root, "digits"), 300, 100)
        argv = (
            "--stage=scratch", "--data_source=directory", f"--data_dir={tree}",
            "--validation_examples=50", "--train_examples=100", "--epochs=1",
            f"--export_dir={self.root}/1",
        )
        with mock.patch.object(export, "export_model", side_effect=KeyboardInterrupt):
            status, lines = self.run_command(*argv)
        self.assertEqual(status, main.EXIT_INTERRUPTED, lines)
        added = os.path.join(tree, "train", "3", "added.png")
        shutil.copyfile(os.path.join(tree, "train", "7", sorted(os.listdir(f"{tree}/train/7"))[0]), added)
        status, lines = self.run_command(*argv)
        self.assertEqual(status, main.EXIT_USER_ERROR, lines)
        self.assertRegex(lines[0], r"holds a backup of another run \(--data_fingerprint=\w{16} there, "
                                   r"\w{16} here\)")
        os.remove(added)
        status, lines = self.run_command(*argv)
        self.assertEqual(status, 0, lines)
        self.assertEqual(self.report(f"{self.root}/1")["resumed_from_epoch"], 1)


if __name__ == "__main__":
    tf.test.main()
