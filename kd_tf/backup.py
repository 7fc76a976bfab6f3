"""Surviving a crash: `--backup_dir` and resuming from the last finished epoch.

`keras.callbacks.BackupAndRestore` keeps the weights, the optimiser state and
the epoch number; `TrainingBackup` extends it with what the kd_tf training
loop needs as well, so that a resumed run reports every epoch and restores
the same best epoch as an uninterrupted one: the per-epoch records of
`training.EpochRecorder` and the state of the best-epoch
`keras.callbacks.EarlyStopping` (best value, best epoch, best weights).

Files in the backup directory of a stage (`stage_backup_dir`):
`latest.weights.h5`, `training_metadata.json` (and their `.bkp` copies) from
Keras, `kd_tf_state.<epoch>.json` for the last two finished epochs and
`best.<epoch>.npz`, the best weights they refer to. Each is written into a
temporary file and renamed, and the kd_tf state of epoch k is written before
Keras records epoch k as finished, so a kill at any moment leaves a
consistent state behind. The stage deletes the directory (`remove`) once
its export is in place.

Usage:

```python
recorder = training.EpochRecorder()
best = keras.callbacks.EarlyStopping(..., restore_best_weights=True)
callbacks = [recorder, best, backup.TrainingBackup(backup_dir, recorder, best)]
train = train.skip(backup.resumed_epoch(backup_dir) * steps_per_epoch)
```
"""

import glob
import json
import os
import re
import shutil

import keras
import numpy as np

from kd_tf import atomic, distribution
from kd_tf.errors import ConfigError

KERAS_METADATA = "training_metadata.json"
_STATE = "kd_tf_state.{}.json"
_BEST = "best.{}.npz"


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


def resumed_epoch(backup_dir):
    """The number of finished epochs recorded in `backup_dir` (0 if none).

    Args:
        backup_dir: a stage's backup directory, or None.

    Returns:
        The epoch a run started now resumes after; 0 starts from scratch.
    """
    if not backup_dir:
        return 0
    path = os.path.join(backup_dir, KERAS_METADATA)
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return int(json.load(f)["epoch"])


def remove(backup_dir):
    """Deletes a stage's backup once its results are safe (no-op for None)."""
    if backup_dir:
        shutil.rmtree(backup_dir, ignore_errors=True)


class TrainingBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` (once per epoch, with a second copy) that also
    backs up and restores an `EpochRecorder` and an `EarlyStopping`.

    Put it after `recorder` and `best` in the callback list, so that it saves
    their state of the epoch and restores it after they reset.

    Args:
        backup_dir: the stage's backup directory.
        recorder: the run's `training.EpochRecorder`.
        best: the run's `keras.callbacks.EarlyStopping` with
            `restore_best_weights=True`.
    """

    def __init__(self, backup_dir, recorder, best):
        super().__init__(backup_dir, double_checkpoint=True, delete_checkpoint=False)
        self.recorder = recorder
        self.best = best

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        epoch = resumed_epoch(self.backup_dir)
        if not epoch:
            return
        state_path = os.path.join(self.backup_dir, _STATE.format(epoch))
        if not os.path.isfile(state_path):
            raise ConfigError(
                ("backup_dir",),
                f"{self.backup_dir} holds a Keras backup of epoch {epoch} without kd_tf's "
                f"{os.path.basename(state_path)}: remove it to start over, or pass another {{0}}",
            )
        with open(state_path) as f:
            state = json.load(f)
        self.recorder.epochs = state["epochs"][:epoch]
        self.best.best = state["best"]
        self.best.best_epoch = state["best_epoch"]
        self.best.wait = state["wait"]
        with np.load(os.path.join(self.backup_dir, _BEST.format(state["best_epoch"]))) as saved:
            self.best.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        self._current_epoch = epoch

    def _save_model(self):
        epoch = self._current_epoch
        os.makedirs(self.backup_dir, exist_ok=True)
        best_path = os.path.join(self.backup_dir, _BEST.format(self.best.best_epoch))
        if not os.path.exists(best_path):
            atomic.write_file(best_path, lambda p: _save_arrays(p, self.best.best_weights))
        state = {
            "epochs": self.recorder.epochs,
            "best": None if self.best.best is None else float(self.best.best),
            "best_epoch": self.best.best_epoch,
            "wait": self.best.wait,
        }
        atomic.write_file(
            os.path.join(self.backup_dir, _STATE.format(epoch)),
            lambda p: _write_json(p, state),
        )
        super()._save_model()
        self._prune(keep={epoch - 1, epoch})

    def _prune(self, keep):
        """Deletes kd_tf state files of epochs not in `keep` and best weights
        none of the kept states refer to."""
        referenced = set()
        for path in glob.glob(os.path.join(self.backup_dir, _STATE.format("*"))):
            epoch = int(re.findall(r"\.(\d+)\.json$", path)[0])
            if epoch in keep:
                with open(path) as f:
                    referenced.add(json.load(f)["best_epoch"])
            else:
                os.remove(path)
        for path in glob.glob(os.path.join(self.backup_dir, _BEST.format("*"))):
            if int(re.findall(r"\.(\d+)\.npz$", path)[0]) not in referenced:
                os.remove(path)


def _save_arrays(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, *arrays)


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)
