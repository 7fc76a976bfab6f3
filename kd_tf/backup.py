"""Surviving a crash: `--backup_dir` and resuming from the last finished epoch.

`TrainingBackup`, a Keras callback, backs up every finished epoch of a run
into the stage's backup directory (`stage_backup_dir`); a run that finds a
backup there resumes after the epoch it holds, restoring the weights, the
optimiser state, the per-epoch records of `training.EpochRecorder` and the
state of the best-epoch `keras.callbacks.EarlyStopping`, so that it reports
every epoch and restores the same best epoch as an uninterrupted run.

Files of a backup, for finished epoch k:

- `epoch-<k>.weights.h5`: the model's and the optimiser's weights (Keras
  `save_weights`);
- `best.<e>.npz`: the weights of the best epoch so far;
- `training_metadata.json` (`RECORD`): the record of epoch k: its number, the
  two files above with their SHA-256, the per-epoch records, the best-epoch
  state and the run's defining fields (`run_fields`);
- `training_metadata.previous.json` (`PREVIOUS_RECORD`): the record before.

Backing up epoch k writes the two weight files and flushes them to disk, moves
the last record to `PREVIOUS_RECORD`, writes the new record (each record whole,
into a temporary file renamed into place: `atomic.write_file`), then deletes
the files no record names. A record names only complete files, so a kill at
any instant leaves the newest record whole and consistent with its files, or
the one before. On resuming, `find_checkpoint` takes the newest record that
reads and whose files match their checksums: a record emptied by a machine
crash, or a damaged weights file, falls back to the epoch before (with a
warning), and the run skips exactly the epochs of the record it restores.

An epoch whose loss diverged (`divergence.DivergenceMonitor`) is never backed
up. A backup whose run-defining fields (model, data slice, epochs, batch,
optimiser and schedule, seed, and the student's teacher and loss: its
terms and their settings, hints and mixup) differ from the run's is refused with a `ConfigError` naming them,
and kept: rerun the same command to resume it, or remove it to start over.
The stage deletes the directory (`remove`) once its export is in place.

Usage:

```python
fields = backup.run_fields(config_lib.fields(config), "scratch", "seed_mlp")
saver = backup.TrainingBackup(backup_dir, recorder, best, monitor, fields)
train = train.skip(saver.checkpoint.epoch * steps_per_epoch)
model.fit(train, initial_epoch=saver.checkpoint.epoch,
          callbacks=[monitor, recorder, best, saver], ...)
```
"""

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

from kd_tf import atomic, distribution
from kd_tf.errors import ConfigError

RECORD = "training_metadata.json"
PREVIOUS_RECORD = "training_metadata.previous.json"
_WEIGHTS = "epoch-{}.weights.h5"
_BEST = "best.{}.npz"
_DATA_FILES = re.compile(r"^(epoch-\d+\.weights\.h5|best\.\d+\.npz)$")
_RECORD_KEYS = ("epoch", "weights", "weights_sha256", "best_weights", "best_weights_sha256")
# Config fields that define a training run; a backup resumes only a run with
# the same values (and the same stage and model).
RUN_FIELDS = (
    "dataset",
    "data_source",
    "data_dir",
    "image_size",
    "test_fraction",
    # A TFRecord or TFDS split streamed past the budget is read in another
    # order than the same split in memory.
    "data_memory_mb",
    "train_examples",
    "validation_examples",
    "augment",
    "augment_views",
    "epochs",
    "batch_size",
    "optimizer",
    "learning_rate",
    "lr_schedule",
    "warmup_epochs",
    "weight_decay",
    "seed",
    "precision",
)
STUDENT_RUN_FIELDS = (
    "teacher_dir",
    "teacher_pixel_range",
    "teacher_class_order",
    "teacher_output",
    "teacher_logits",
    "logits_cache",
    "temperature",
    "alpha",
    "distillation_loss",
    "dkd_alpha",
    "dkd_beta",
    "dkd_warmup_epochs",
    "dist_beta",
    "dist_gamma",
    "hint_layers",
    "hint_weight",
    "mixup_alpha",
)


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


def run_fields(settings, stage, model_name):
    """The fields that define a training run, from `config.fields(config)`."""
    names = RUN_FIELDS + (STUDENT_RUN_FIELDS if stage == "student" else ())
    return {"stage": stage, "model": model_name, **{name: settings[name] for name in names}}


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
        _check_fields(backup_dir, record.get("run", {}), fields)
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


def _check_fields(backup_dir, saved, fields):
    differing = sorted(name for name in fields or {} if saved.get(name) != fields[name])
    if not differing:
        return
    shown = "; ".join(
        f"{{{i + 1}}}={_shown(saved.get(name))} there, {_shown(fields[name])} here"
        for i, name in enumerate(differing)
    )
    raise ConfigError(
        ("backup_dir", *differing),
        f"{{0}} {backup_dir} holds a backup of another run ({shown}): rerun with the same "
        f"flags to resume it, or remove {backup_dir} (or pass another {{0}}) to start over",
    )


def _shown(value):
    return "unset" if value is None else value


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
        self._load_weights(os.path.join(self.backup_dir, record["weights"]))
        self.recorder.epochs = record["epochs"][: record["epoch"]]
        self.best.best = record["best"]
        self.best.best_epoch = record["best_epoch"]
        self.best.wait = record["wait"]
        with np.load(os.path.join(self.backup_dir, record["best_weights"])) as saved:
            self.best.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        logging.info("resuming after epoch %d from %s", record["epoch"], self.backup_dir)

    def _load_weights(self, path):
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        try:
            self.model.load_weights(path)
        except (ValueError, OSError) as error:
            reason = str(error).splitlines()[0]
            raise ConfigError(
                ("backup_dir",),
                f"{{0}} {self.backup_dir} holds a backup this model cannot load ({reason}): "
                f"remove {self.backup_dir} to start over, or pass another {{0}}",
            ) from error

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is not None and self.monitor.diverged_at is not None:
            return
        self._save(epoch + 1)

    def _save(self, epoch):
        os.makedirs(self.backup_dir, exist_ok=True)
        weights = os.path.join(self.backup_dir, _WEIGHTS.format(epoch))
        self.model.save_weights(weights, overwrite=True)
        atomic.flush_to_disk(weights)
        best = os.path.join(self.backup_dir, _BEST.format(self.best.best_epoch))
        if self._last_record is None or self._last_record["best_weights"] != os.path.basename(best):
            atomic.write_file(best, lambda path: _save_arrays(path, self.best.best_weights))
        record = {
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
        previous = self._last_record
        if previous is not None:
            _write_record(os.path.join(self.backup_dir, PREVIOUS_RECORD), previous)
        _write_record(os.path.join(self.backup_dir, RECORD), record)
        self._last_record = record
        self._prune(record, previous)

    def _prune(self, *records):
        """Deletes the weight files none of `records` names."""
        named = {r[key] for r in records if r for key in ("weights", "best_weights")}
        for path in glob.glob(os.path.join(self.backup_dir, "*")):
            name = os.path.basename(path)
            if _DATA_FILES.match(name) and name not in named:
                os.remove(path)


def _save_arrays(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, *arrays)


def _write_record(path, record):
    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(record, f)

    atomic.write_file(path, write)
