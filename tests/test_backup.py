"""Backups (`--backup_dir`) that survive a diverged epoch, a changed command or
data or teacher, a full disk, a second run on the same directory and a kill at
any instant of their writing.

`training.fit_and_restore_best` is run directly on a `seed_mlp` and 128 MNIST
images with a constant learning rate, so that the first epochs of a 3-epoch run
are a 2-epoch run; a resumed run must end with the records and weights of the
run that was never interrupted. The command-line cases go through
`kd_tf.main.run_command`, or a real `python -m kd_tf.main` where the disk
fills up (`helpers.run_on_full_disk`) or another process holds the directory.
"""

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from unittest import mock

import helpers
import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import (
    backup,
    data,
    determinism,
    export,
    main,
    models,
    pipelines,
    reporting,
    run_identity,
    training,
)
from kd_tf import config as config_lib
from kd_tf.errors import ConfigError, UserError

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


@pytest.mark.slow
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
            if name.endswith(".weights.npz")
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

    def interrupted_at_export(self, *argv):
        """Runs `argv` to the end of training, Ctrl-C at the export: its
        backup holds every epoch."""
        with mock.patch.object(export, "export_model", side_effect=KeyboardInterrupt):
            status, lines = self.run_command(*argv)
        self.assertEqual(status, main.EXIT_INTERRUPTED, lines)

    def assert_refused(self, argv, pattern):
        """`argv` ends with exit status 2 and one line matching `pattern`;
        the backup directory is kept as it was, and free."""
        before = helpers.snapshot(self.backup_dir)
        status, lines = self.run_command(*argv)
        self.assertEqual(status, main.EXIT_USER_ERROR, lines)
        self.assertLen(lines, 1)
        self.assertRegex(lines[0], pattern)
        self.assertEqual(helpers.snapshot(self.backup_dir), before, "the backup is kept")
        self.assert_free(self.backup_dir)

    def assert_free(self, backup_dir):
        """No run holds the backup directories under `backup_dir`."""
        self.assertEqual(
            [name for _, _, names in os.walk(backup_dir) for name in names if name == backup.LOCK],
            [],
        )


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
        self.assert_free(self.backup_dir)
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
                    f"({differences}): rerun with the same flags and data to resume it, or remove",
                )
                self.assertEqual(_files(scratch_backup), before, "the backup is kept")
                self.assert_free(self.backup_dir)
        status, lines = self.run_command(*argv)
        self.assertEqual(status, 0, lines)
        self.assertEqual(self.report(f"{self.root}/1")["resumed_from_epoch"], 3)
        self.assertFalse(os.path.exists(scratch_backup))



def _fake_backup(directory, fields):
    """A complete backup of epoch 1 (of placeholder files) recording `fields`."""
    os.makedirs(directory)
    record = {"epoch": 1, "run": fields}
    for key, name in (("weights", "epoch-1.weights.npz"), ("best_weights", "best.0.npz")):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(name.encode())
        record[key] = name
        record[f"{key}_sha256"] = hashlib.sha256(name.encode()).hexdigest()
    with open(os.path.join(directory, backup.RECORD), "w") as f:
        json.dump(record, f)


def _changed(name, value):
    """Another value of config field `name` than `value`."""
    if name in config_lib.CHOICES:
        return next(choice for choice in config_lib.CHOICES[name] if choice != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, (list, tuple)):
        # A list flag (`hint_layers`, `distillation_loss`, `image_size`): one
        # more entry, so that an empty default changes too.
        return [*value, value[-1] if value else "other"]
    return f"{value}-other"


class RunFieldsCoverageTest(tf.test.TestCase):
    """Every config field either defines a training run, and a backup
    resumes only with its value, or is listed as not changing what a stage
    computes; a field added to the config later is neither until classified."""

    def test_every_config_field_is_classified_once(self):
        read_by_training = [
            name for name, group in config_lib.FIELD_GROUPS.items()
            if group not in run_identity.NOT_RUN_GROUPS
        ]
        classified = [
            "stage", "model", *run_identity.RUN_FIELDS, *run_identity.STUDENT_RUN_FIELDS,
            *run_identity.NOT_RUN_FIELDS,
        ]
        self.assertCountEqual(classified, read_by_training)

    def test_a_backup_resumes_only_the_run_of_its_fields(self):
        settings = config_lib.fields(config_lib.Config())
        for stage in ("teacher", "scratch", "student"):
            identities = {"data_fingerprint": "256 examples, sha256 0"}
            if stage == "student":
                identities["teacher"] = "sha256 0"
            fields = run_identity.run_fields(settings, stage, "seed_mlp", **identities)
            directory = os.path.join(self.get_temp_dir(), self.id(), stage)
            _fake_backup(directory, fields)
            self.assertEqual(backup.resumed_epoch(directory, fields), 1)
            for name, value in fields.items():
                with self.subTest(stage=stage, refused=name):
                    with self.assertRaises(ConfigError) as refusal:
                        backup.resumed_epoch(directory, {**fields, name: _changed(name, value)})
                    named = run_identity.IDENTITIES.get(name, name)
                    self.assertIn(named, str(refusal.exception))
            for name in set(settings) - set(fields):
                with self.subTest(stage=stage, resumed=name):
                    changed = {**settings, name: _changed(name, settings[name])}
                    self.assertEqual(
                        backup.resumed_epoch(
                            directory, run_identity.run_fields(changed, stage, "seed_mlp", **identities)
                        ),
                        1,
                    )


class ChangedInputsTest(_CommandLineTest):
    """A backup records the data and the teacher it was made on: other data
    in the same folder, other IDX files or a teacher re-exported at the same
    path is refused in one line naming what changed."""

    def test_a_changed_folder_is_refused_and_resumes_once_restored(self):
        tree = helpers.write_mnist_tree(os.path.join(self.root, "digits"), 120, 100)
        argv = (
            "--stage=scratch", "--data_source=directory", f"--data_dir={tree}", "--epochs=2",
            "--train_examples=64", "--validation_examples=32", f"--export_dir={self.root}/1",
        )
        self.interrupted_at_export(*argv)
        extra = os.path.join(tree, "train", "3", "extra.png")
        shutil.copy(os.path.join(tree, "test", "3", os.listdir(f"{tree}/test/3")[0]), extra)
        self.assert_refused(
            argv,
            r"holds a backup of another run \(the data read: 196 examples, sha256 \w+ there, "
            r"196 examples, sha256 \w+ here\): rerun with the same flags and data",
        )
        os.remove(extra)
        status, lines = self.run_command(*argv)
        self.assertEqual(status, 0, lines)
        self.assertEqual(self.report(f"{self.root}/1")["resumed_from_epoch"], 2)

    def test_other_idx_files_are_refused(self):
        train, test = data.read_packaged_mnist()
        first, second = (os.path.join(self.root, name) for name in ("a", "b"))
        for directory, start in ((first, 0), (second, 500)):
            _write_idx_dir(directory, train, test, start, 500)
        argv = ("--stage=scratch", "--data_source=idx", "--epochs=1", "--train_examples=64",
                "--validation_examples=32", f"--export_dir={self.root}/1")
        self.interrupted_at_export(*argv, f"--idx_dir={first}")
        self.assert_refused(
            (*argv, f"--idx_dir={second}"), f"\\(--idx_dir={first} there, {second} here\\)"
        )
        # The same labels, one training image changed.
        shutil.rmtree(first)
        images = train.images[:500].copy()
        images[0] = 255 - images[0]
        _write_idx_dir(first, data.Split(images, train.labels[:500]), test, 0, 500)
        self.assert_refused((*argv, f"--idx_dir={first}"), r"\(the data read: 596 examples")

    def test_a_teacher_exported_again_at_its_path_is_refused(self):
        teacher = helpers.tiny_export(os.path.join(self.root, "teacher"))
        argv = ("--stage=student", f"--teacher_dir={teacher}", "--min_teacher_accuracy=0",
                "--epochs=1", f"--export_dir={self.root}/1")
        self.interrupted_at_export(*argv)
        export.export_model(
            helpers.tiny_model(seed=1), teacher, check_images=helpers.random_images(2),
            overwrite=True,
        )
        self.assert_refused(
            argv, r"\(the teacher read: sha256 \w+ there, sha256 \w+ here\): rerun with"
        )


def _write_idx_dir(directory, train, test, start, count):
    """`count` training and test examples from `start` as the four IDX files."""
    os.makedirs(directory)
    for prefix, split in (("train", train), ("t10k", test)):
        for kind, array in (("images", split.images[start:start + count, ..., 0]),
                            ("labels", split.labels[start:start + count])):
            array = np.ascontiguousarray(array, np.uint8)
            header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
            rank = "idx3" if kind == "images" else "idx1"
            with open(os.path.join(directory, f"{prefix}-{kind}-{rank}-ubyte"), "wb") as f:
                f.write(header + array.tobytes())


class FullDiskTest(_FitTest):
    """A backup that cannot be written costs a warning, never the run (HDF5
    failing to write on a full disk crashed the process, exit 139: see
    `FullDiskProcessTest`)."""

    def _fit_failing(self, backup_dir, epoch):
        """`_fit` of 3 epochs whose backup of `epoch` fails once its weights
        are written (the disk fills up); returns the warnings logged."""
        write_record = backup._write_record

        def fill_up(path, record):
            if record["epoch"] == epoch:
                raise OSError(errno.ENOSPC, "No space left on device")
            write_record(path, record)

        with mock.patch.object(backup, "_write_record", fill_up):
            with self.assertLogs("absl", "WARNING") as logs:
                self.assert_like_the_reference(self._fit(backup_dir, epochs=3))
        return [record.getMessage() for record in logs.records]

    def test_a_failed_backup_warns_and_training_goes_on(self):
        for epoch, kept in ((2, 3), (3, 2)):
            with self.subTest(failing=epoch):
                backup_dir = os.path.join(self.root, f"full{epoch}")
                warnings = self._fit_failing(backup_dir, epoch)
                self.assertLen(warnings, 1)
                self.assertRegex(
                    warnings[0],
                    f"could not back up epoch {epoch} into {backup_dir} \\(No space left on "
                    f"device\\): training goes on, a rerun would resume after epoch {epoch - 1}",
                )
                self.assertEqual(backup.resumed_epoch(backup_dir), kept)
                left = os.listdir(backup_dir)
                self.assertNotIn(f"epoch-{epoch}.weights.npz", left, "the failed epoch's file")
                self.assertEqual([name for name in left if name.startswith(".")], [])


class FullDiskProcessTest(tf.test.TestCase):
    def test_a_run_backing_up_onto_a_full_disk_exports(self):
        root = self.get_temp_dir()
        backup_dir = os.path.join(root, "small_disk")
        os.makedirs(backup_dir)
        export_dir = os.path.join(root, "exported")
        status, stderr, left = helpers.run_on_full_disk(
            backup_dir,
            64,
            helpers.slice_argv(
                root, "--stage=scratch", "--epochs=1", "--train_examples=256",
                f"--backup_dir={backup_dir}", f"--export_dir={export_dir}",
            ),
        )
        self.assertEqual(status, 0, stderr[-2000:])
        self.assertNotIn("Traceback", stderr)
        self.assertRegex(stderr, "could not back up epoch 1 into .*No space left on device")
        self.assertEqual(helpers.read_report(export_dir)["stage"], "scratch")
        self.assertEqual(left, [], "the backup is removed once the export is in place")


# Holds the lock of the backup directory argv[1] until its stdin closes.
_HOLDER = (
    "import os, sys\n"
    "from kd_tf import locks\n"
    "os.makedirs(sys.argv[1], exist_ok=True)\n"
    "held = locks.LockFile.acquire(os.path.join(sys.argv[1], sys.argv[2]))\n"
    "print('held' if held else 'refused', flush=True)\n"
    "sys.stdin.read()\n"
)


class OneRunAtATimeTest(_CommandLineTest):
    """A run holds its backup directory until it ends: a second run is
    refused in one line naming the first; a killed run leaves it free."""

    def test_a_second_run_is_refused_and_a_killed_one_leaves_the_directory_free(self):
        scratch_backup = os.path.join(self.backup_dir, "scratch")
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, scratch_backup, backup.LOCK],
            cwd=helpers.REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.addCleanup(holder.kill)
        self.assertEqual(holder.stdout.readline().strip(), "held")
        argv = ("--stage=scratch", "--epochs=1", f"--export_dir={self.root}/1")
        status, lines = self.run_command(*argv)
        self.assertEqual(status, main.EXIT_USER_ERROR, lines)
        self.assertEqual(
            lines,
            [f"kd_tf: error: --backup_dir {scratch_backup} is in use by another run (process "
             f"{holder.pid}): wait for it to end, or pass another --backup_dir"],
        )
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        self.assertTrue(os.path.exists(os.path.join(scratch_backup, backup.LOCK)))
        status, lines = self.run_command(*argv)
        self.assertEqual(status, 0, lines)
        self.assertFalse(os.path.exists(scratch_backup))


if __name__ == "__main__":
    tf.test.main()
