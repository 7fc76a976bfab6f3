"""Optimisers, schedules and the training loop with best-epoch selection.

Usage:

```python
optimizer = training.make_optimizer("adam", 1e-3, "cosine", steps_per_epoch=430, epochs=10)
model.compile(optimizer=optimizer, loss=..., metrics=["accuracy"])
epochs, best_epoch = training.fit_and_restore_best(
    model, train, validation, epochs=10, steps_per_epoch=430, log_dir="logs/teacher/1")
```
"""

import time

import keras
import numpy as np
from absl import logging

from kd_tf import backup, distribution, divergence, interrupts


def make_optimizer(
    name, learning_rate, schedule, *, steps_per_epoch, epochs, warmup_epochs=0.5, weight_decay=0.0
):
    """Builds the optimiser and its learning-rate schedule.

    Args:
        name: "adam", "adamw", "adadelta" or "sgd" (Nesterov momentum 0.9).
        learning_rate: peak learning rate.
        schedule: "cosine" (linear warm-up, then cosine decay to 0 at the last
            step) or "constant".
        steps_per_epoch: optimiser steps in one epoch.
        epochs: number of epochs the schedule spans.
        warmup_epochs: warm-up length for "cosine".
        weight_decay: decoupled weight decay, for "adamw".

    Returns:
        A `keras.optimizers.Optimizer`.
    """
    rate = learning_rate
    if schedule == "cosine":
        total_steps = steps_per_epoch * epochs
        warmup_steps = min(int(warmup_epochs * steps_per_epoch), total_steps - 1)
        rate = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup_steps else learning_rate,
            decay_steps=total_steps - warmup_steps,
            warmup_target=learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    if name == "adam":
        return keras.optimizers.Adam(rate)
    if name == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=weight_decay)
    if name == "adadelta":
        return keras.optimizers.Adadelta(rate)
    if name == "sgd":
        return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}")


def optimizer_for(optimization, steps_per_epoch):
    """`make_optimizer` with the settings of a `config.OptimizationConfig`."""
    return make_optimizer(
        optimization.optimizer,
        optimization.learning_rate,
        optimization.lr_schedule,
        steps_per_epoch=steps_per_epoch,
        epochs=optimization.epochs,
        warmup_epochs=optimization.warmup_epochs,
        weight_decay=optimization.weight_decay,
    )


class EpochRecorder(keras.callbacks.Callback):
    """Records, per epoch, the training seconds (validation excluded), the
    validation seconds and the logged metrics; optionally also the test split's
    accuracy and loss. Logs one line per epoch (kd_tf's only epoch line; `fit`
    runs with `verbose=0`), e.g.

        epoch 3/18: train 12.1 s, validation 0.8 s; loss 0.0912, accuracy 0.9731,
        val_loss 0.0402, val_accuracy 0.9882

    The test figures are for plots only: model selection never sees them.

    Args:
        test_logits: optional callable `() -> (logits, labels)` evaluated at the
            end of every epoch.
    """

    def __init__(self, test_logits=None):
        super().__init__()
        self.test_logits = test_logits
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()
        self._train_seconds = None

    def on_test_begin(self, logs=None):
        self._validation_started = time.perf_counter()
        if self._train_seconds is None:
            self._train_seconds = self._validation_started - self._started

    def on_test_end(self, logs=None):
        self._validation_seconds = time.perf_counter() - self._validation_started

    def on_epoch_end(self, epoch, logs=None):
        record = {
            "epoch": epoch + 1,
            "train_seconds": round(self._train_seconds, 3),
            "validation_seconds": round(self._validation_seconds, 3),
        }
        record.update({key: float(value) for key, value in (logs or {}).items()})
        if self.test_logits is not None:
            logits, labels = self.test_logits()
            record.update({f"test_{k}": v for k, v in evaluate_logits(logits, labels).items()})
        self.epochs.append(record)
        logging.info("%s", _epoch_line(record, self.params.get("epochs")))


def _epoch_line(record, epochs):
    """`epoch E/N: train S s, validation S s; loss ..., accuracy ..., val_loss ...`."""
    figures = sorted(
        (key for key in record if key not in ("epoch", "train_seconds", "validation_seconds")),
        key=lambda key: (
            key.startswith("test_") * 2 + key.startswith("val_"),
            not key.endswith("loss"),
            key,
        ),
    )
    return (
        f"epoch {record['epoch']}/{epochs}: train {record['train_seconds']:.1f} s, "
        f"validation {record['validation_seconds']:.1f} s; "
        + ", ".join(f"{key} {record[key]:.4f}" for key in figures)
    )


def evaluate_logits(logits, labels):
    """Score logits against integer labels.

    Args:
        logits: float array `[N, classes]`.
        labels: int array `[N]` of class indices.

    Returns:
        Dict with `"accuracy"` (fraction of rows whose argmax is the label)
        and `"loss"` (mean sparse categorical cross-entropy from logits), as
        Python floats.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(
            "Expected logits [N, classes] and labels [N] with N > 0. "
            f"Received logits.shape={logits.shape}, "
            f"labels.shape={labels.shape}."
        )
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {logits.shape[1]}); received values in "
            f"[{labels.min()}, {labels.max()}]."
        )
    labels = labels.astype(np.int64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    return {
        "accuracy": float(np.mean(np.argmax(logits, axis=1) == labels)),
        "loss": float(-np.mean(log_probs[rows, labels])),
    }


def build_optimizer(trainer):
    """Creates the optimiser's variables of the compiled `trainer` before `fit`.

    Compiled outside a distribution strategy's scope, Keras creates them
    while tracing the first training step, and `tf.function` then traces the
    step a second time, one that may not create variables: built first, the
    step is traced once. The variables and their values are the same.
    """
    optimizer = trainer.optimizer
    if optimizer is not None and not optimizer.built:
        with trainer.distribute_strategy.scope():
            optimizer.build(trainer.trainable_variables)


def fit_and_restore_best(
    trainer,
    train,
    validation,
    *,
    epochs,
    steps_per_epoch,
    log_dir,
    test_logits=None,
    backup_dir=None,
    run_fields=None,
):
    """Trains and restores the weights of the epoch with the best validation
    accuracy (the first on ties); stops at the first NaN or infinite loss.

    With `backup_dir`, every finished epoch but a diverged one is backed up
    (`backup.TrainingBackup`); a run resumes after the newest complete epoch
    there, the stream advanced to its end, and ends as an uninterrupted run.

    Args:
        trainer: a compiled `keras.Model` reporting `val_accuracy`.
        train: endless training `tf.data.Dataset`.
        validation: finite validation `tf.data.Dataset`.
        epochs: number of epochs.
        steps_per_epoch: steps in one epoch.
        log_dir: TensorBoard log directory.
        test_logits: optional, see `EpochRecorder`.
        backup_dir: optional directory for `backup.TrainingBackup`.
        run_fields: the run's `run_identity.run_fields` (backups of other runs are refused).

    Returns:
        `(epoch_records, best_epoch)`, with epochs numbered from 1.

    Raises:
        UserError: Training diverged (`kd_tf.divergence`), or the backup is another run's.
    """
    recorder, monitor = EpochRecorder(test_logits), divergence.DivergenceMonitor()
    best = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", mode="max", patience=epochs, restore_best_weights=True
    )
    tensorboard = keras.callbacks.TensorBoard(log_dir)
    callbacks, saver = [interrupts.InterruptCheck(), monitor, recorder, best, tensorboard], None
    if backup_dir:  # after `recorder` and `best`, whose state it saves
        saver = backup.TrainingBackup(backup_dir, recorder, best, monitor, run_fields)
        callbacks.append(saver)
    resumed = saver.checkpoint.epoch if saver else 0
    build_optimizer(trainer)
    logging.info("training: %d epochs of %d steps", epochs, steps_per_epoch)
    trainer.fit(
        distribution.distributable(train.skip(resumed * steps_per_epoch)),
        epochs=epochs,
        initial_epoch=resumed,
        steps_per_epoch=steps_per_epoch,
        validation_data=distribution.distributable(validation),
        shuffle=False,
        callbacks=callbacks,
        verbose=0,
    )
    monitor.raise_if_diverged(backup_dir, saver.last_epoch if saver else 0)
    return recorder.epochs, best.best_epoch + 1
