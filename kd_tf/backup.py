"""Surviving a crash: `--backup_dir` and resuming from the last finished epoch.

`TrainingBackup`, a Keras callback, backs up every finished epoch of a run
into the stage's backup directory (`stage_backup_dir`); a run that finds a
backup there resumes after the epoch it holds, restoring the weights, the
optimiser state, the per-epoch records of `training.EpochRecorder` and the
state of the best-epoch `keras.callbacks.EarlyStopping`, so that it reports
every epoch and restores the same best epoch as an uninterrupted run.

Files of a backup, for finished epoch k:

- `epoch-<k>.weights.npz`: the model's variables (its weights and the state
  of its random seeds) and the optimiser's;
- `best.<e>.npz`: the weights of the best epoch so far;
- `training_metadata.json` (`RECORD`): the record of epoch k: its number, the
  two files above with their SHA-256, the per-epoch records, the best-epoch
  state and the run's defining fields (`run_fields`);
- `training_metadata.previous.json` (`PREVIOUS_RECORD`): the record before.

Backing up epoch k writes the two weight files and flushes them to disk, moves
the last record to `PREVIOUS_RECORD`, writes the new record, then deletes the
files no record names. Python writes every file into a temporary file renamed
into place (`atomic.write_file`): a full disk is an `OSError` that leaves
nothing behind (HDF5, under Keras's `save_weights`, crashed the process at
exit after failing to write). A record names only complete files, so a kill at
any instant leaves the newest record whole and consistent with its files, or
the one before. On resuming, `find_checkpoint` takes the newest record that
reads and whose files match their checksums: a record emptied by a machine
crash, or a damaged weights file, falls back to the epoch before (with a
warning), and the run skips exactly the epochs of the record it restores.

An epoch whose loss diverged (`divergence.DivergenceMonitor`) is never backed
up. A backup that cannot be written (a full disk, a lost permission) is
reported in one warning and training goes on: the last complete backup
stays, and the next epoch tries again.

A backup records the run that made it (`run_identity.run_fields`: the
fields that change what it computes, the data and the teacher it read); a
backup of another run is refused with a `ConfigError` naming what changed,
and kept. The stage deletes the directory (`remove`) once its export is in
place.

One run at a time uses a backup directory: `lock` takes it for the run's
lifetime (a `locks.LockFile`, `.lock`, which a killed run leaves free) and
refuses a second run in one line.

Usage:

```python
lock = backup.lock(backup_dir)  # released with lock.release() when the run ends
fields = run_identity.run_fields(config_lib.fields(config), "scratch", "seed_mlp")
saver = backup.TrainingBackup(backup_dir, recorder, best, monitor, fields)
train = train.skip(saver.checkpoint.epoch * steps_per_epoch)
model.fit(train, initial_epoch=saver.checkpoint.epoch,
          callbacks=[monitor, recorder, best, saver], ...)
```
"""

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
from typing import NamedTuple

import keras
import numpy as np
from absl import logging

from kd_tf import atomic, distribution, locks, run_identity
from kd_tf.errors import ConfigError

RECORD = "training_metadata.json"
PREVIOUS_RECORD = "training_metadata.previous.json"
LOCK = ".lock"
_WEIGHTS = "epoch-{}.weights.npz"
_BEST = "best.{}.npz"
_DATA_FILES = re.compile(r"^(epoch-\d+\.weights\.npz|best\.\d+\.npz)$")
_RECORD_KEYS = ("epoch", "weights", "weights_sha256", "best_weights", "best_weights_sha256")
class Checkpoint(NamedTuple):
    """What a run resumes from.

    Attributes:
        epoch: finished epochs restored (0: start from scratch).
        record: the epoch's record, or None.
        damaged: names of records passed over as incomplete or damaged.
    """

    epoch: int
    record: dict | None
    damaged: tuple


def stage_backup_dir(backup_dir, stage, strategy):
    """The backup directory of one stage run.

    Args:
        backup_dir: `--backup_dir`, or None.
        stage: stage name (sub-runs of `compare` get one directory each).
        strategy: the stage's strategy; the workers of a multi-worker
            cluster other than the chief keep their own subdirectory.

    Returns:
        `<backup_dir>/<stage>` (`.../<stage>/<task>` on a non-chief worker),
        or None without `backup_dir`.
    """
    if not backup_dir:
        return None
    path = os.path.join(backup_dir, stage)
    if distribution.is_chief(strategy):
        return path
    return os.path.join(path, distribution.task_name(strategy))


def lock(backup_dir):
    """Takes a stage's backup directory for this run (creating it), so that
    no other run reads or writes it meanwhile.

    Args:
        backup_dir: the stage's backup directory, or None.

    Returns:
        The `locks.LockFile` to `release()` when the run ends, however it
        ends; None without `backup_dir`.

    Raises:
        ConfigError: another live run holds the directory, or it cannot be
            created.
    """
    if not backup_dir:
        return None
    path = os.path.join(backup_dir, LOCK)
    try:
        os.makedirs(backup_dir, exist_ok=True)
        held = locks.LockFile.acquire(path)
    except OSError as error:
        raise atomic.storage_error(backup_dir, error.strerror, "backup_dir") from error
    if held is None:
        holder = locks.holder(path)
        process = f" (process {holder})" if holder else ""
        raise ConfigError(
            ("backup_dir",),
            f"{{0}} {backup_dir} is in use by another run{process}: wait for it to end, "
            "or pass another {0}",
        )
    return held


def find_checkpoint(backup_dir, fields=None):
    """The newest complete epoch backed up in `backup_dir` (see the module doc).

    Args:
        backup_dir: a stage's backup directory, or None.
        fields: the run's `run_fields`; None skips the check.

    Returns:
        A `Checkpoint` (epoch 0 when there is nothing to resume).

    Raises:
        ConfigError: the backup is of a run with other `fields`.
    """
    damaged = []
    for name in (RECORD, PREVIOUS_RECORD) if backup_dir else ():
        path = os.path.join(backup_dir, name)
        if not os.path.exists(path):
            continue
        record = _complete_record(backup_dir, path)
        if record is None:
            damaged.append(name)
            continue
        run_identity.check(backup_dir, record.get("run", {}), fields)
        return Checkpoint(record["epoch"], record, tuple(damaged))
    return Checkpoint(0, None, tuple(damaged))


def resumed_epoch(backup_dir, fields=None):
    """The finished epochs a run started now resumes after (0: from scratch);
    see `find_checkpoint`."""
    return find_checkpoint(backup_dir, fields).epoch


def remove(backup_dir):
    """Deletes a stage's backup once its results are safe (no-op for None)."""
    if backup_dir:
        shutil.rmtree(backup_dir, ignore_errors=True)


def _complete_record(backup_dir, path):
    """The record at `path` if it reads and its files match their checksums."""
    try:
        with open(path) as f:
            record = json.load(f)
        if not all(key in record for key in _RECORD_KEYS) or record["epoch"] < 1:
            return None
        for name in ("weights", "best_weights"):
            if _sha256(os.path.join(backup_dir, record[name])) != record[f"{name}_sha256"]:
                return None
    except (OSError, ValueError, TypeError):
        return None
    return record


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TrainingBackup(keras.callbacks.Callback):
    """Backs up every finished epoch and resumes from the newest complete one
    (see the module doc).

    Put it after `recorder` and `best` in the callback list, so that it saves
    their state of the epoch and restores it after they reset; pass
    `checkpoint.epoch` to `fit` as `initial_epoch` and skip as many epochs of
    the training stream.

    Args:
        backup_dir: the stage's backup directory.
        recorder: the run's `training.EpochRecorder`.
        best: the run's `keras.callbacks.EarlyStopping` with
            `restore_best_weights=True`.
        monitor: the run's `divergence.DivergenceMonitor`: a diverged epoch is
            not backed up.
        fields: the run's `run_fields`, recorded and checked (None: neither).

    Attributes:
        checkpoint: the `Checkpoint` the run resumes from.

    Raises:
        ConfigError: the backup is of a run with other `fields`.
    """

    def __init__(self, backup_dir, recorder, best, monitor=None, fields=None):
        super().__init__()
        self.backup_dir = backup_dir
        self.recorder = recorder
        self.best = best
        self.monitor = monitor
        self.fields = fields
        self.checkpoint = find_checkpoint(backup_dir, fields)
        self._last_record = self.checkpoint.record
        self._failing = False

    @property
    def last_epoch(self):
        """The last epoch backed up (or restored); 0 if none."""
        return self._last_record["epoch"] if self._last_record else 0

    def on_train_begin(self, logs=None):
        for name in self.checkpoint.damaged:
            logging.warning(
                "%s is incomplete or damaged: not used", os.path.join(self.backup_dir, name)
            )
        record = self.checkpoint.record
        if record is None:
            if self.checkpoint.damaged:
                logging.warning("no complete backup in %s: starting from epoch 1", self.backup_dir)
            return
        self._load_state(os.path.join(self.backup_dir, record["weights"]))
        self.recorder.epochs = record["epochs"][: record["epoch"]]
        self.best.best = record["best"]
        self.best.best_epoch = record["best_epoch"]
        self.best.wait = record["wait"]
        self.best.best_weights = _load_arrays(os.path.join(self.backup_dir, record["best_weights"]))
        logging.info("resuming after epoch %d from %s", record["epoch"], self.backup_dir)

    def _load_state(self, path):
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        variables = _state_variables(self.model)
        try:
            arrays = _load_arrays(path)
        except (ValueError, OSError) as error:
            problem = str(error).splitlines()[0]
        else:
            problem = _mismatch(variables, arrays)
        if problem:
            raise ConfigError(
                ("backup_dir",),
                f"{{0}} {self.backup_dir} holds a backup this model cannot load ({problem}): "
                f"remove {self.backup_dir} to start over, or pass another {{0}}",
            )
        for variable, array in zip(variables, arrays):
            variable.assign(array)

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is not None and self.monitor.diverged_at is not None:
            return
        try:
            self._save(epoch + 1)
        except OSError as error:
            if not self._failing:
                rerun = f"resume after epoch {self.last_epoch}" if self.last_epoch else "start over"
                logging.warning(
                    "could not back up epoch %d into %s (%s): training goes on, a rerun would "
                    "%s; the next epochs try again",
                    epoch + 1, self.backup_dir, error.strerror or error, rerun,
                )
            self._failing = True
            return
        if self._failing:
            logging.info("backing up into %s again from epoch %d", self.backup_dir, epoch + 1)
        self._failing = False

    def _save(self, epoch):
        """Backs up finished epoch `epoch`; on an `OSError` the backup is the
        one before, and the files this attempt wrote are removed."""
        weights = os.path.join(self.backup_dir, _WEIGHTS.format(epoch))
        best = os.path.join(self.backup_dir, _BEST.format(self.best.best_epoch))
        written = []
        try:
            os.makedirs(self.backup_dir, exist_ok=True)
            _write_arrays(weights, [v.numpy() for v in _state_variables(self.model)], written)
            if self._last_record is None or self._last_record["best_weights"] != os.path.basename(
                best
            ):
                _write_arrays(best, self.best.best_weights, written)
            record = self._record(epoch, weights, best)
            previous = self._last_record
            if previous is not None:
                _write_record(os.path.join(self.backup_dir, PREVIOUS_RECORD), previous)
            _write_record(os.path.join(self.backup_dir, RECORD), record)
        except OSError:
            for path in written:
                with contextlib.suppress(OSError):
                    os.remove(path)
            raise
        self._last_record = record
        self._prune(record, previous)

    def _record(self, epoch, weights, best):
        return {
            "epoch": epoch,
            "weights": os.path.basename(weights),
            "weights_sha256": _sha256(weights),
            "best_weights": os.path.basename(best),
            "best_weights_sha256": _sha256(best),
            "epochs": self.recorder.epochs,
            "best": None if self.best.best is None else float(self.best.best),
            "best_epoch": self.best.best_epoch,
            "wait": self.best.wait,
            "run": self.fields or {},
        }

    def _prune(self, *records):
        """Deletes the weight files none of `records` names."""
        named = {r[key] for r in records if r for key in ("weights", "best_weights")}
        for path in glob.glob(os.path.join(self.backup_dir, "*")):
            name = os.path.basename(path)
            if _DATA_FILES.match(name) and name not in named:
                os.remove(path)


def _state_variables(model):
    """What a backup restores: the model's variables (weights and random
    seeds) and its optimiser's."""
    optimizer = list(model.optimizer.variables) if model.optimizer is not None else []
    return list(model.variables) + optimizer


def _mismatch(variables, arrays):
    """Why `arrays` cannot be assigned to `variables` in order, or None."""
    if len(arrays) != len(variables):
        return f"{len(arrays)} arrays there, {len(variables)} variables here"
    for variable, array in zip(variables, arrays):
        if tuple(array.shape) != tuple(variable.shape):
            return f"{variable.path}: shape {tuple(array.shape)} there, {tuple(variable.shape)} here"
    return None


def _write_arrays(path, arrays, written):
    """Writes `arrays` to `path` (`atomic.write_file`) and appends `path` to `written`."""

    def write(temporary):
        with open(temporary, "wb") as f:
            np.savez(f, *arrays)

    atomic.write_file(path, write)
    written.append(path)


def _load_arrays(path):
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def _write_record(path, record):
    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(record, f)

    atomic.write_file(path, write)
