"""The run template every training stage shares (teacher, scratch, student).

`TrainingRun` owns what does not depend on the stage: the strategy, the
export directory (checked before any work), the backup (locked for the run,
see `backup.lock`) and the epoch it resumes after, the fit that restores the
best epoch, the export (with the data's class names and preprocessing)
measured through its reloaded copy with its report (per-class accuracy,
confusion matrix and `confusion.png`), and the backup's removal once the
export is in place. A stage says only what differs: its data, its model and
what it adds to the report.

Without `--export_dir`, the export goes to the version directory that is
free when it is complete (`export.NextVersion`): the one TensorBoard's logs
are named after, unless another run exported there meanwhile.

Ctrl-C during a run says what is true: "no partial export was written"
until the export is in place (`not_exported`), "the export is complete at
DIR" after. A streamed file removed during the run ends it with one line
naming the file; the backup stays, so that a rerun resumes once the file is
back.

Usage:

```python
with TrainingRun(config, "scratch", "seed_mlp") as run, run.not_exported():
    inputs = TrainingInputs(splits, train, validation, steps_per_epoch)
    with run.strategy.scope():
        model = build_and_compile(run.optimizer(inputs.steps_per_epoch))
    epochs, best_epoch = run.fit(model, model, inputs)
    return run.finish(model, inputs.splits, epochs, best_epoch)
```
"""

import contextlib
import os
import time
from typing import NamedTuple

import tensorflow as tf
from absl import logging

from kd_tf import (
    backup,
    cpu,
    data,
    distribution,
    export,
    interrupts,
    pipelines,
    precision,
    preprocessing,
    reporting,
    run_identity,
    training,
)
from kd_tf import config as config_lib
from kd_tf.data import streaming
from kd_tf.errors import UserError
from kd_tf.stages.report import RunReport, data_summary

# Validation images on which a reloaded export must reproduce the model.
CHECK_EXAMPLES = 256


class TrainingInputs(NamedTuple):
    """What a training stage trains on."""

    splits: data.DataSplits
    train: tf.data.Dataset
    validation: tf.data.Dataset
    steps_per_epoch: int


def load_data(data_config):
    """The splits of a `config.DataConfig`'s data set."""
    return data.load_splits(
        data_config.dataset,
        data_config.data_source,
        validation_examples=data_config.validation_examples,
        train_examples=data_config.train_examples,
        tfds_data_dir=data_config.tfds_data_dir,
        idx_dir=data_config.idx_dir,
        data_dir=data_config.data_dir,
        image_size=data_config.image_size,
        test_fraction=data_config.test_fraction,
        memory_mb=data_config.data_memory_mb,
    )


def export_dir_for(config, stage, strategy):
    """Where this process exports: the resolved directory on the chief (see
    `export.resolve_export_dir`), a temporary one on the other workers."""
    if not distribution.is_chief(strategy):
        return distribution.worker_dir(strategy, stage)
    return export.resolve_export_dir(
        config.export.export_dir, config.export.saved_models_dir, stage, config.export.overwrite
    )


def next_version(config, stage, strategy, planned):
    """For an output complete now, the chief's next free version without
    `--export_dir` (an `export.NextVersion`; logged when it is not
    `planned`, the one free at the start), else None (the output goes to
    `export_dir_for`)."""
    if config.export.export_dir is not None or not distribution.is_chief(strategy):
        return None
    version = export.NextVersion(config.export.saved_models_dir, stage)
    if version.path != planned:
        logging.info(
            "%s was taken by another run meanwhile: exporting to %s", planned, version.path
        )
    return version


def record_test(report, logits, splits):
    """Sets the test accuracy and loss of `report` (a `RunReport`) from the
    test split's `logits`, its confusion matrix and each class's accuracy;
    returns the matrix."""
    labels = splits.test.labels
    test = training.evaluate_logits(logits, labels)
    report.test_accuracy, report.test_loss = test["accuracy"], test["loss"]
    matrix = reporting.confusion_matrix(logits.argmax(axis=1), labels, splits.num_classes)
    report.confusion = matrix.tolist()
    report.per_class = [
        {"class": name, "examples": int(examples), "accuracy": accuracy}
        for name, examples, accuracy in zip(
            splits.class_names, matrix.sum(axis=1), reporting.class_accuracies(matrix)
        )
    ]
    return matrix


class TrainingRun:
    """One training stage's run (see the module doc).

    Args:
        config: the run's `config.Config`.
        stage: "teacher", "scratch" or "student".
        model_name: the architecture trained (a `models.MODELS` key or a
            `.keras` file), as the report's `model` shows it.

    Use it as a context manager (or call `close()`): the backup directory
    is locked until the run ends, however it ends.

    Raises:
        UserError: the export directory is taken, or the backup directory
            is another live run's or holds a backup of another run (see
            `kd_tf.backup`).
    """

    def __init__(self, config, stage, model_name):
        self.started = time.perf_counter()
        self.cpu = cpu.for_run()
        self.config = config
        self.stage = stage
        self.model_name = model_name
        self.strategy = distribution.strategy_for(config.runtime, config.optimization.batch_size)
        self.export_dir = export_dir_for(config, stage, self.strategy)
        self.backup_dir = backup.stage_backup_dir(config.runtime.backup_dir, stage, self.strategy)
        self._lock = backup.lock(self.backup_dir)
        try:
            self.run_fields = run_identity.run_fields(
                config_lib.fields(config), stage, model_name, **self._teacher_identity()
            )
            self.resumed_from_epoch = backup.resumed_epoch(self.backup_dir, self.run_fields)
        except BaseException:
            self.close()
            raise
        self.precision = precision.resolve_for_run(config.runtime.precision)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Releases the backup directory (once)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _teacher_identity(self):
        teacher_dir = self.config.distillation.teacher_dir
        if self.stage != "student" or not self.backup_dir or not teacher_dir:
            return {}
        return {"teacher": ", ".join(str(export.fingerprint(path)) for path in teacher_dir)}

    @staticmethod
    def not_exported():
        """The block before the export is in place: Ctrl-C there says so."""
        return interrupts.outcome("no partial export was written")

    def optimizer(self, steps_per_epoch):
        """A fresh optimiser with the run's schedule."""
        return training.optimizer_for(self.config.optimization, steps_per_epoch)

    def fit(self, trainer, model, inputs):
        """Trains `trainer` (whose weights are `model`'s) and restores the best
        epoch; returns `(epoch_records, best_epoch)`. A backup resumes only a
        run on the same data: its fields include `data_fingerprint`
        (`DataSplits.fingerprint`).

        Raises:
            UserError: the backup is of other data (see `kd_tf.backup`), or
                a streamed file was removed during the run.
        """
        log_dir = os.path.join(
            self.config.runtime.log_dir,
            self.stage,
            os.path.basename(os.path.normpath(self.export_dir)),
        )
        fields = self.run_fields
        if self.backup_dir:
            fields = {**fields, "data_fingerprint": inputs.splits.fingerprint()}
        with self._reading(inputs.splits):
            return training.fit_and_restore_best(
                trainer,
                inputs.train,
                inputs.validation,
                epochs=self.config.optimization.epochs,
                steps_per_epoch=inputs.steps_per_epoch,
                log_dir=distribution.worker_dir(self.strategy, log_dir),
                test_logits=self._test_monitor(model, inputs.splits.test),
                backup_dir=self.backup_dir,
                run_fields=fields,
            )

    @contextlib.contextmanager
    def _reading(self, splits):
        """A block reading `splits`: a streamed file that can no longer be
        read ends it with a `UserError` naming the file."""
        try:
            yield
        except streaming.READ_FAILURES as error:
            unreadable = streaming.unreadable_file(splits)
            if unreadable is None:
                raise
            path, reason = unreadable
            resumed = backup.resumed_epoch(self.backup_dir)
            rerun = "rerun"
            if resumed:
                rerun = f"rerun to resume after epoch {resumed} from {self.backup_dir}"
            raise UserError(
                f"cannot read {path} any more ({reason}): the data set changed during the run; "
                f"put the file back and {rerun}"
            ) from error

    def _test_monitor(self, model, test):
        if not self.config.runtime.monitor_test:
            return None
        # A tf.data pipeline of kd_tf's: `predict` on a NumPy array builds
        # Keras's own, whose parallel map op determinism (--deterministic) has
        # tf.data rewrite into a sequential MapDataset that keeps the parallel
        # op's attribute, and TensorFlow logs "NodeDef mentions attribute
        # use_unbounded_threadpool which is not in the op definition" as an error.
        dataset = distribution.distributable(
            pipelines.evaluation_dataset(test, self.config.optimization.eval_batch_size)
        )
        return lambda: (model.predict(dataset, verbose=0), test.labels)

    def finish(self, model, splits, epochs, best_epoch, distillation=None):
        """Exports `model` with its report, removes the backup; returns the
        report (as `report.json` holds it, plus `export_dir`)."""
        recorded = preprocessing.Preprocessing.for_splits(splits)
        report = RunReport(
            stage=self.stage,
            flags=config_lib.fields(self.config),
            data=data_summary(splits, self.config.data),
            preprocessing=recorded.as_json(),
            model=self.model_name,
            params=int(model.count_params()),
            epochs=epochs,
            best_epoch=best_epoch,
            strategy=distribution.strategy_name(self.strategy),
            replicas=distribution.replicas(self.strategy),
            workers=distribution.workers(self.strategy),
            stage_seconds=round(time.perf_counter() - self.started, 1),
            resumed_from_epoch=self.resumed_from_epoch,
            precision=self.precision,
            cpu=self.cpu,
            distillation=distillation or {},
        )
        with self._reading(splits):
            self._export(model, splits, report, recorded)
        with interrupts.outcome(f"the export is complete at {self.export_dir}"):
            backup.remove(self.backup_dir)
            logging.info(
                "%s: test accuracy %.2f %% (best epoch %d of %d), exported to %s",
                self.stage,
                100 * report.test_accuracy,
                report.best_epoch,
                len(report.epochs),
                self.export_dir,
            )
        return {**report.as_json(), "export_dir": self.export_dir}

    def _export(self, model, splits, report, recorded):
        """Exports `model` (its class names and preprocessing `recorded`),
        measures the test split through the reloaded export, and writes the
        report and curves into it."""
        eval_batch_size = self.config.optimization.eval_batch_size

        def finalize(staging_dir, served):
            logits = splits.test.map_batches(
                served.logits, eval_batch_size, f"{self.stage}: measuring the test split"
            )
            matrix = record_test(report, logits, splits)
            assets = export.assets_extra_dir(staging_dir)
            reporting.write_json(report.as_json(), os.path.join(assets, "report.json"))
            title = f"{self.stage}: {report.model}"
            reporting.plot_curves(report.epochs, os.path.join(assets, "curves.png"), title=title)
            reporting.plot_confusion(
                {title: matrix}, splits.class_names, os.path.join(assets, "confusion.png")
            )

        version = next_version(self.config, self.stage, self.strategy, self.export_dir)
        self.export_dir = export.export_model(
            precision.float32_copy(model),
            version.path if version else self.export_dir,
            check_images=splits.validation.head(CHECK_EXAMPLES),
            class_names=splits.class_names,
            recorded=recorded,
            finalize=finalize,
            overwrite=self.config.export.overwrite,
            on_taken=version.taken if version else None,
        )
