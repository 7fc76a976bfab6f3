"""The stages behind `python -m kd_tf.main --stage=...`.

- `teacher`: cross-entropy training of the teacher.
- `student`: distillation of a teacher (`--teacher_dir`) into the student.
- `scratch`: the student's architecture on hard labels only, the baseline.
- `compare`: teacher, student and scratch in one command, then a comparison.
- `predict`: classifies image files or test images with an export.
- `tflite`: converts an export to TFLite and measures it against the export.
- `tune`: keras-tuner search over the student's temperature and alpha.

Each training stage restores its best epoch on the validation split, exports
a SavedModel (see `kd_tf.export`), measures the test split once through the
export reloaded from disk, and writes `assets.extra/report.json` and
`assets.extra/curves.png` into it. Every stage trains under the strategy of
`--strategy` (see `kd_tf.distribution`); on a multi-worker cluster only the
chief's export, report and logs are kept.

Usage:

```python
settings = config.parse(["--stage=teacher", "--epochs=1", "--train_examples=512"])
report = stages.run(settings)
```
"""

import os
import tempfile
import time
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from kd_tf import (
    atomic,
    backup,
    config,
    data,
    determinism,
    distillation,
    distribution,
    export,
    inference,
    lite,
    logits_cache,
    models,
    pipelines,
    reporting,
    training,
    tuning,
)
from kd_tf.errors import UserError

CHECK_EXAMPLES = 256


def _load_data(settings):
    return data.load_splits(
        settings.dataset,
        settings.data_source,
        validation_examples=settings.validation_examples,
        train_examples=settings.train_examples,
        tfds_data_dir=settings.tfds_data_dir,
        idx_dir=settings.idx_dir,
    )


def _training_examples(settings, split):
    """The training images and labels, with `--augment_views` fixed views
    appended, and whether the pipeline must draw distortions afresh."""
    if settings.augment and settings.augment_views > 0:
        images = pipelines.augmented_views(split.images, settings.augment_views, settings.seed)
        return images, np.tile(split.labels, settings.augment_views), False
    return split.images, split.labels, settings.augment


def _compile_supervised(model, settings, steps_per_epoch):
    model.compile(
        optimizer=_optimizer(settings, steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        steps_per_execution=settings.steps_per_execution,
    )


def _optimizer(settings, steps_per_epoch):
    return training.make_optimizer(
        settings.optimizer,
        settings.learning_rate,
        settings.lr_schedule,
        steps_per_epoch=steps_per_epoch,
        epochs=settings.epochs,
        warmup_epochs=settings.warmup_epochs,
        weight_decay=settings.weight_decay,
    )


def _test_monitor(settings, model, splits):
    if not settings.monitor_test:
        return None
    test = splits.test
    return lambda: (
        model.predict(test.images, batch_size=settings.eval_batch_size, verbose=0),
        test.labels,
    )


def _log_dir(settings, stage, export_dir, strategy):
    path = os.path.join(settings.log_dir, stage, os.path.basename(os.path.normpath(export_dir)))
    return distribution.worker_dir(strategy, path)


def _export_with_report(settings, stage, model, splits, export_dir, report):
    """Exports `model`, measures the test split through the reloaded export
    and writes the report and curves into it; returns the full report."""

    def finalize(staging_dir, served):
        logits = served.predict_logits(splits.test.images, batch_size=settings.eval_batch_size)
        test = training.evaluate_logits(logits, splits.test.labels)
        report.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
        assets = export.assets_extra_dir(staging_dir)
        reporting.write_json(report, os.path.join(assets, "report.json"))
        reporting.plot_curves(
            report["epochs"],
            os.path.join(assets, "curves.png"),
            title=f"{stage}: {report['model']}",
        )

    export.export_model(
        model,
        export_dir,
        check_images=splits.validation.images[:CHECK_EXAMPLES],
        finalize=finalize,
        overwrite=settings.overwrite,
    )
    report["export_dir"] = export_dir
    logging.info(
        "%s: test accuracy %.2f %% (best epoch %d of %d), exported to %s",
        stage,
        100 * report["test_accuracy"],
        report["best_epoch"],
        len(report["epochs"]),
        export_dir,
    )
    return report


def _data_summary(settings, splits):
    return {
        **splits.summary(),
        "augment": settings.augment,
        "augment_views": settings.augment_views,
    }


def _base_report(settings, stage, model_name, model, splits, epochs, best_epoch, started):
    strategy = distribution.strategy_from_settings(settings)
    return {
        "stage": stage,
        "flags": config.to_dict(settings),
        "data": _data_summary(settings, splits),
        "model": model_name,
        "params": int(model.count_params()),
        "epochs": epochs,
        "best_epoch": best_epoch,
        "strategy": distribution.strategy_name(strategy),
        "replicas": distribution.replicas(strategy),
        "workers": distribution.workers(strategy),
        "stage_seconds": round(time.perf_counter() - started, 1),
    }


def train_supervised(settings, stage):
    """`teacher` and `scratch`: cross-entropy on hard labels.

    Args:
        settings: parsed flags (see `kd_tf.config`).
        stage: "teacher" or "scratch" (picks the default model).

    Returns:
        The run report (also written into the export).
    """
    started = time.perf_counter()
    strategy = distribution.strategy_from_settings(settings)
    model_name = settings.model or (
        models.DEFAULT_TEACHER if stage == "teacher" else models.DEFAULT_STUDENT
    )
    export_dir = _export_dir(settings, stage, strategy)
    backup_dir = backup.stage_backup_dir(settings.backup_dir, stage, strategy)
    resumed = backup.resumed_epoch(backup_dir)
    determinism.make_reproducible(settings.seed, deterministic=settings.deterministic)
    splits = _load_data(settings)
    images, labels, random_augment = _training_examples(settings, splits.train)
    steps = pipelines.steps_per_epoch(len(splits.train), settings.batch_size)
    with strategy.scope():
        model = models.build_model(model_name, splits.image_shape, splits.num_classes)
        _compile_supervised(model, settings, steps)
    epochs, best_epoch = training.fit_and_restore_best(
        model,
        pipelines.training_dataset(
            images, labels, settings.batch_size, seed=settings.seed, augment=random_augment
        ),
        pipelines.evaluation_dataset(
            splits.validation.images, splits.validation.labels, settings.eval_batch_size
        ),
        epochs=settings.epochs,
        steps_per_epoch=steps,
        log_dir=_log_dir(settings, stage, export_dir, strategy),
        test_logits=_test_monitor(settings, model, splits),
        backup_dir=backup_dir,
    )
    report = _base_report(settings, stage, model_name, model, splits, epochs, best_epoch, started)
    report["resumed_from_epoch"] = resumed
    report = _export_with_report(settings, stage, model, splits, export_dir, report)
    backup.remove(backup_dir)
    return report


def _export_dir(settings, stage, strategy):
    """The export directory of this worker (see `distribution.worker_dir`)."""
    if not distribution.is_chief(strategy):
        return distribution.worker_dir(strategy, stage)
    return export.resolve_export_dir(
        settings.export_dir, settings.saved_models_dir, stage, settings.overwrite
    )


def _load_matching_model(path, what, splits):
    """Loads the model at `path` and checks that it fits the data set;
    `what` names it in messages (e.g. "teacher")."""
    model = export.load_serving_model(path)
    _check_fits(model, path, what, splits)
    return model


def _check_fits(model, path, what, splits):
    """Checks that `model`, loaded from `path`, takes the data set's images and
    predicts its classes; `what` names it in messages (e.g. "teacher")."""
    if tuple(model.image_shape) != tuple(splits.image_shape):
        raise UserError(
            f"{what} {path} takes images of shape {tuple(model.image_shape)} "
            f"but {splits.dataset} has {tuple(splits.image_shape)}: use a {what} trained on this data"
        )
    if model.num_classes != splits.num_classes:
        raise UserError(
            f"{what} {path} predicts {model.num_classes} classes but "
            f"{splits.dataset} has {splits.num_classes}: use a {what} trained on this data"
        )


def _load_teacher(settings):
    if not settings.teacher_dir:
        raise UserError(
            f"--stage={settings.stage} needs a teacher: pass --teacher_dir=DIR (an export of "
            "--stage=teacher, e.g. saved_models/teacher/1, or a .keras file)"
        )
    # Under the strategy's scope the teacher's variables are mirrored onto
    # every replica's device, so the online mode reads them locally.
    with distribution.strategy_from_settings(settings).scope():
        return export.load_serving_model(settings.teacher_dir)


class DistillationInputs(NamedTuple):
    """What every distillation run shares: the data, the teacher, how its
    logits reach the `Distiller`, and the datasets built from them."""

    splits: data.DataSplits
    teacher: export.ServingModel
    mode: str
    train: tf.data.Dataset
    validation: tf.data.Dataset
    steps_per_epoch: int
    teacher_logits_seconds: float
    logits_cache: str | None
    logits_cache_megabytes: float
    shards: tempfile.TemporaryDirectory | None

    def release(self):
        """Removes the on-disk logit shards, if any; call once training is over."""
        if self.shards is not None:
            self.shards.cleanup()

    def report_fields(self):
        """The fields the student and tune reports share."""
        return {
            "teacher_dir": self.teacher.path,
            "teacher_logits": self.mode,
            "teacher_logits_seconds": round(self.teacher_logits_seconds, 2),
            "logits_cache": self.logits_cache,
            "logits_cache_megabytes": round(self.logits_cache_megabytes, 3),
        }


def prepare_distillation(settings):
    """Loads the data and the teacher from `--teacher_dir`, computes the
    teacher's logits once when they can be cached, and builds the training
    and validation datasets; `--stage=student` and `--stage=tune` both start
    here.

    Args:
        settings: parsed flags (see `kd_tf.config`).

    Returns:
        A `DistillationInputs`.

    Usage:

    ```python
    inputs = stages.prepare_distillation(settings)
    distiller = stages.build_distiller(settings, inputs, "seed_mlp", temperature=4, alpha=0.9)
    ```
    """
    teacher = _load_teacher(settings)
    determinism.make_reproducible(settings.seed, deterministic=settings.deterministic)
    splits = _load_data(settings)
    _check_fits(teacher, settings.teacher_dir, "teacher", splits)
    images, labels, random_augment = _training_examples(settings, splits.train)
    if settings.teacher_logits == "cached" and random_augment:
        raise UserError(
            "--teacher_logits=cached cannot follow distortions drawn afresh every step: "
            "pass --augment_views=K to cache logits of K fixed views, or --teacher_logits=online"
        )
    mode = distillation.resolve_teacher_logits_mode(settings.teacher_logits, random_augment)
    validation = splits.validation
    steps_per_epoch = pipelines.steps_per_epoch(len(splits.train), settings.batch_size)
    cache = None
    if mode == "cached":
        cache = logits_cache.resolve_cache(
            settings.logits_cache, len(images), teacher.num_classes, settings.logits_memory_mb
        )
    logits_started = time.perf_counter()
    shards = None
    if cache == "disk":
        shards = tempfile.TemporaryDirectory(prefix="kd_tf_logits_", dir=settings.logits_cache_dir)
        train, validation_dataset = _streamed_datasets(
            settings, teacher, images, labels, validation, shards.name
        )
    else:
        train_logits = None
        if cache == "memory":
            train_logits = teacher.predict_logits(images, batch_size=settings.eval_batch_size)
        # The validation split is never distorted: its logits are cached in every mode.
        validation_logits = teacher.predict_logits(
            validation.images, batch_size=settings.eval_batch_size
        )
        train = pipelines.training_dataset(
            images,
            labels,
            settings.batch_size,
            seed=settings.seed,
            teacher_logits=train_logits,
            augment=random_augment,
        )
        validation_dataset = pipelines.evaluation_dataset(
            validation.images,
            validation.labels,
            settings.eval_batch_size,
            teacher_logits=validation_logits,
        )
    return DistillationInputs(
        splits=splits,
        teacher=teacher,
        mode=mode,
        train=train,
        validation=validation_dataset,
        steps_per_epoch=steps_per_epoch,
        teacher_logits_seconds=time.perf_counter() - logits_started,
        logits_cache=cache,
        logits_cache_megabytes=(
            logits_cache.logits_megabytes(len(images), teacher.num_classes) if cache else 0.0
        ),
        shards=shards,
    )


def _streamed_datasets(settings, teacher, images, labels, validation, directory):
    """Training and validation datasets whose teacher logits are written to
    TFRecord shards under `directory` and streamed from there."""
    shape = {"image_shape": images.shape[1:], "num_classes": teacher.num_classes}
    train_shards = logits_cache.write_shards(
        teacher,
        images,
        labels,
        os.path.join(directory, "train"),
        batch_size=settings.eval_batch_size,
    )
    validation_shards = logits_cache.write_shards(
        teacher,
        validation.images,
        validation.labels,
        os.path.join(directory, "validation"),
        batch_size=settings.eval_batch_size,
    )
    return (
        logits_cache.training_stream(
            train_shards, settings.batch_size, seed=settings.seed, **shape
        ),
        logits_cache.evaluation_stream(validation_shards, settings.eval_batch_size, **shape),
    )


def build_distiller(settings, inputs, model_name, temperature, alpha):
    """A fresh student `model_name` in a compiled `Distiller`.

    Args:
        settings: parsed flags (optimiser, schedule, epochs).
        inputs: the `DistillationInputs` it will train on.
        model_name: a key of `models.MODELS`.
        temperature: T > 0.
        alpha: weight of the soft term, in [0, 1].

    Returns:
        The compiled `distillation.Distiller`; its `.student` is the model.
    """
    splits = inputs.splits
    student = models.build_model(model_name, splits.image_shape, splits.num_classes)
    distiller = distillation.Distiller(
        student,
        temperature=temperature,
        alpha=alpha,
        teacher=inputs.teacher.logits if inputs.mode == "online" else None,
    )
    # Built, so that its weights can be saved (keras-tuner checkpoints a trial's best epoch).
    distiller.build((None, *splits.image_shape))
    distiller.compile(
        optimizer=_optimizer(settings, inputs.steps_per_epoch),
        steps_per_execution=settings.steps_per_execution,
    )
    return distiller


def distill_student(settings):
    """`student`: distils the teacher from `--teacher_dir` into the student.

    Args:
        settings: parsed flags (see `kd_tf.config`).

    Returns:
        The run report (also written into the export).
    """
    started = time.perf_counter()
    model_name = settings.model or models.DEFAULT_STUDENT
    strategy = distribution.strategy_from_settings(settings)
    export_dir = _export_dir(settings, "student", strategy)
    backup_dir = backup.stage_backup_dir(settings.backup_dir, "student", strategy)
    resumed = backup.resumed_epoch(backup_dir)
    inputs = prepare_distillation(settings)
    splits = inputs.splits
    with strategy.scope():
        distiller = build_distiller(
            settings, inputs, model_name, settings.temperature, settings.alpha
        )
    student = distiller.student
    epochs, best_epoch = training.fit_and_restore_best(
        distiller,
        inputs.train,
        inputs.validation,
        epochs=settings.epochs,
        steps_per_epoch=inputs.steps_per_epoch,
        log_dir=_log_dir(settings, "student", export_dir, strategy),
        test_logits=_test_monitor(settings, student, splits),
        backup_dir=backup_dir,
    )
    inputs.release()
    report = _base_report(
        settings, "student", model_name, student, splits, epochs, best_epoch, started
    )
    report.update(
        **inputs.report_fields(),
        temperature=settings.temperature,
        alpha=settings.alpha,
        resumed_from_epoch=resumed,
    )
    report = _export_with_report(settings, "student", student, splits, export_dir, report)
    backup.remove(backup_dir)
    return report


def tune(settings):
    """`tune`: keras-tuner search over the temperature and alpha of the
    student's distillation; the teacher's logits and the datasets are
    prepared once for all trials (see `kd_tf.tuning`).

    Args:
        settings: parsed flags (see `kd_tf.config`); every trial trains under
            the `--strategy` (see `kd_tf.distribution`).

    Returns:
        The search report (also written to `<tune_dir>/report.json`).
    """
    started = time.perf_counter()
    model_name = settings.model or models.DEFAULT_STUDENT
    tuning.check_tune_dir(settings.tune_dir)
    inputs = prepare_distillation(settings)
    strategy = distribution.strategy_from_settings(settings)

    def build(temperature, alpha):
        return build_distiller(settings, inputs, model_name, temperature, alpha)

    trials = tuning.search(
        settings, build, inputs.train, inputs.validation, inputs.steps_per_epoch, strategy
    )
    inputs.release()
    report = {
        "stage": "tune",
        "flags": config.to_dict(settings),
        "data": _data_summary(settings, inputs.splits),
        "model": model_name,
        "tuner": settings.tuner,
        "objective": tuning.OBJECTIVE,
        **inputs.report_fields(),
        "stage_seconds": round(time.perf_counter() - started, 1),
    }
    return tuning.write_results(trials, settings.tune_dir, report)


def compare(settings):
    """`compare`: teacher, then student from that teacher, then scratch, each
    from its flag file (`--teacher_flagfile` ...) with the flags given to
    compare itself on top; then `comparison.png` (test accuracy and loss per
    epoch) and a summary table in `<export_dir>/report.json` and `summary.md`.

    Args:
        settings: parsed flags (see `kd_tf.config`).

    Returns:
        The comparison report.
    """
    strategy = distribution.strategy_from_settings(settings)
    export_dir = _export_dir(settings, "compare", strategy)
    shared = config.explicit_arguments(
        settings, exclude={"stage", "export_dir", "teacher_dir", *config.COMPARE_FLAGFILES.values()}
    )
    for flagfile in config.COMPARE_FLAGFILES.values():
        path = settings[flagfile].value
        if not os.path.isfile(path):
            raise UserError(f"--{flagfile}={path} does not exist: pass the path of a flag file")

    def sub_run(stage, *extra):
        flagfile = settings[config.COMPARE_FLAGFILES[stage]].value
        sub_settings = config.parse(
            [f"--flagfile={flagfile}", *shared, f"--stage={stage}", "--monitor_test", *extra]
        )
        return _run_stage(sub_settings)

    reports = {"teacher": sub_run("teacher")}
    reports["student"] = sub_run("student", f"--teacher_dir={reports['teacher']['export_dir']}")
    reports["scratch"] = sub_run("scratch")

    rows = reporting.summary_rows(reports)
    table = reporting.markdown_table(rows)
    summary = {
        "stage": "compare",
        "flags": config.to_dict(settings),
        "runs": {name: r["export_dir"] for name, r in reports.items()},
        "summary": rows,
    }
    with atomic.staged(export_dir, overwrite=settings.overwrite) as staging:
        reporting.plot_comparison(
            {f"{name} ({r['model']})": r["epochs"] for name, r in reports.items()},
            os.path.join(staging, "comparison.png"),
        )
        reporting.write_json(summary, os.path.join(staging, "report.json"))
        with open(os.path.join(staging, "summary.md"), "w") as f:
            f.write(table + "\n")
    logging.info("comparison written to %s\n%s", export_dir, table)
    summary["export_dir"] = export_dir
    return summary


def _require_model_dir(settings):
    if not settings.model_dir:
        raise UserError(
            f"--stage={settings.stage} needs --model_dir=DIR: an export such as "
            "saved_models/student/1"
        )


def predict(settings):
    """`predict`: classifies the `--images` files, or the `--test_index`
    test images, with `--model_dir`; prints one line per image (see
    `kd_tf.inference.format_prediction`) and, with `--output_image`, saves
    a grid of the images with their predictions.

    Args:
        settings: parsed flags (see `kd_tf.config`).

    Returns:
        `{"names": [...], "predictions": [kd_tf.inference.Prediction, ...]}`.
    """
    _require_model_dir(settings)
    if (settings.images is None) == (settings.test_index is None):
        raise UserError(
            "--stage=predict needs either --images=FILES (files, directories or globs) "
            "or --test_index=I[,J...]"
        )
    if settings.images is not None:
        paths = inference.find_images(settings.images)
        served = export.load_serving_model(settings.model_dir)
        images = inference.load_images(paths, served.image_shape)
        names, labels = paths, None
        grid_names = [os.path.basename(path) for path in paths]
    else:
        splits = _load_data(settings)
        served = _load_matching_model(settings.model_dir, "model", splits)
        indices = [int(i) for i in settings.test_index]
        if max(indices) >= len(splits.test):
            raise UserError(
                f"--test_index={max(indices)} is out of range: the {splits.dataset} test "
                f"split has {len(splits.test)} images (0 to {len(splits.test) - 1})"
            )
        images, labels = splits.test.images[indices], splits.test.labels[indices]
        names = [f"{splits.dataset}_test[{i}]" for i in indices]
        grid_names = [f"test[{i}]" for i in indices]
    predictions = inference.predict(served, images, labels, settings.eval_batch_size)
    for name, prediction in zip(names, predictions):
        print(inference.format_prediction(name, prediction), flush=True)
    if settings.output_image:
        inference.save_grid(
            images, grid_names, predictions, settings.output_image, title=settings.model_dir
        )
        logging.info("predictions drawn in %s", settings.output_image)
    return {"names": names, "predictions": predictions}


def convert_tflite(settings):
    """`tflite`: converts `--model_dir` to `--tflite_path` with `--quantize`
    and compares test accuracy and size with the SavedModel (see
    `kd_tf.lite.export_tflite`).

    Args:
        settings: parsed flags (see `kd_tf.config`).

    Returns:
        The report, also written to `<tflite_path>.json`.
    """
    _require_model_dir(settings)
    if not settings.tflite_path:
        raise UserError("--stage=tflite needs --tflite_path=FILE: where to write the .tflite")
    splits = _load_data(settings)
    served = _load_matching_model(settings.model_dir, "model", splits)
    return lite.export_tflite(
        served,
        settings.tflite_path,
        settings.quantize,
        splits,
        seed=settings.seed,
        batch_size=settings.eval_batch_size,
    )


def run(settings):
    """Runs the stage named by `settings.stage` and returns its report.

    On a multi-worker cluster, the workers other than the chief write into
    temporary directories, removed at the end (see `kd_tf.distribution`).
    """
    try:
        return _run_stage(settings)
    finally:
        distribution.remove_worker_dirs()


def _run_stage(settings):
    if settings.stage in ("teacher", "scratch"):
        return train_supervised(settings, settings.stage)
    if settings.stage == "student":
        return distill_student(settings)
    if settings.stage == "predict":
        return predict(settings)
    if settings.stage == "tflite":
        return convert_tflite(settings)
    if settings.stage == "tune":
        return tune(settings)
    return compare(settings)
