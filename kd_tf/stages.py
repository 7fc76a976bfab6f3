"""The stages behind `python -m kd_tf.main --stage=...`.

- `teacher`: cross-entropy training of the teacher.
- `student`: distillation of a teacher (`--teacher_dir`) into the student.
- `scratch`: the student's architecture on hard labels only, the baseline.
- `compare`: teacher, student and scratch in one command, then a comparison.
- `tune`: keras-tuner search over the student's temperature and alpha.

Each training stage restores its best epoch on the validation split, exports
a SavedModel (see `kd_tf.export`), measures the test split once through the
export reloaded from disk, and writes `assets.extra/report.json` and
`assets.extra/curves.png` into it.

Usage:

```python
settings = config.parse(["--stage=teacher", "--epochs=1", "--train_examples=512"])
report = stages.run(settings)
```
"""

import os
import time
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from kd_tf import config, data, distillation, export, models, pipelines, reporting, training, tuning
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


def _log_dir(settings, stage, export_dir):
    return os.path.join(settings.log_dir, stage, os.path.basename(os.path.normpath(export_dir)))


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
    return {
        "stage": stage,
        "flags": config.to_dict(settings),
        "data": _data_summary(settings, splits),
        "model": model_name,
        "params": int(model.count_params()),
        "epochs": epochs,
        "best_epoch": best_epoch,
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
    model_name = settings.model or (
        models.DEFAULT_TEACHER if stage == "teacher" else models.DEFAULT_STUDENT
    )
    export_dir = export.resolve_export_dir(settings.export_dir, settings.saved_models_dir, stage)
    keras.utils.set_random_seed(settings.seed)
    splits = _load_data(settings)
    images, labels, random_augment = _training_examples(settings, splits.train)
    steps = pipelines.steps_per_epoch(len(splits.train), settings.batch_size)
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
        log_dir=_log_dir(settings, stage, export_dir),
        test_logits=_test_monitor(settings, model, splits),
    )
    report = _base_report(settings, stage, model_name, model, splits, epochs, best_epoch, started)
    return _export_with_report(settings, stage, model, splits, export_dir, report)


def _load_teacher(settings, splits):
    if not settings.teacher_dir:
        raise UserError(
            f"--stage={settings.stage} needs a teacher: pass --teacher_dir=DIR (an export of "
            "--stage=teacher, e.g. saved_models/teacher/1, or a .keras file)"
        )
    teacher = export.load_serving_model(settings.teacher_dir)
    if tuple(teacher.image_shape) != tuple(splits.image_shape):
        raise UserError(
            f"teacher {settings.teacher_dir} takes images of shape {tuple(teacher.image_shape)} "
            f"but {splits.dataset} has {tuple(splits.image_shape)}: use a teacher trained on this data"
        )
    if teacher.num_classes != splits.num_classes:
        raise UserError(
            f"teacher {settings.teacher_dir} predicts {teacher.num_classes} classes but "
            f"{splits.dataset} has {splits.num_classes}: use a teacher trained on this data"
        )
    return teacher


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
    keras.utils.set_random_seed(settings.seed)
    splits = _load_data(settings)
    teacher = _load_teacher(settings, splits)
    images, labels, random_augment = _training_examples(settings, splits.train)
    if settings.teacher_logits == "cached" and random_augment:
        raise UserError(
            "--teacher_logits=cached cannot follow distortions drawn afresh every step: "
            "pass --augment_views=K to cache logits of K fixed views, or --teacher_logits=online"
        )
    mode = distillation.resolve_teacher_logits_mode(settings.teacher_logits, random_augment)
    validation = splits.validation
    logits_started = time.perf_counter()
    if mode == "cached":
        train_logits = teacher.predict_logits(images, batch_size=settings.eval_batch_size)
        validation_logits = teacher.predict_logits(
            validation.images, batch_size=settings.eval_batch_size
        )
    else:
        train_logits = validation_logits = None
    teacher_logits_seconds = time.perf_counter() - logits_started
    return DistillationInputs(
        splits=splits,
        teacher=teacher,
        mode=mode,
        train=pipelines.training_dataset(
            images,
            labels,
            settings.batch_size,
            seed=settings.seed,
            teacher_logits=train_logits,
            augment=random_augment,
        ),
        validation=pipelines.evaluation_dataset(
            validation.images,
            validation.labels,
            settings.eval_batch_size,
            teacher_logits=validation_logits,
        ),
        steps_per_epoch=pipelines.steps_per_epoch(len(splits.train), settings.batch_size),
        teacher_logits_seconds=teacher_logits_seconds,
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
    export_dir = export.resolve_export_dir(
        settings.export_dir, settings.saved_models_dir, "student"
    )
    inputs = prepare_distillation(settings)
    splits = inputs.splits
    distiller = build_distiller(settings, inputs, model_name, settings.temperature, settings.alpha)
    student = distiller.student
    epochs, best_epoch = training.fit_and_restore_best(
        distiller,
        inputs.train,
        inputs.validation,
        epochs=settings.epochs,
        steps_per_epoch=inputs.steps_per_epoch,
        log_dir=_log_dir(settings, "student", export_dir),
        test_logits=_test_monitor(settings, student, splits),
    )
    report = _base_report(
        settings, "student", model_name, student, splits, epochs, best_epoch, started
    )
    report.update(
        teacher_dir=settings.teacher_dir,
        teacher_logits=inputs.mode,
        teacher_logits_seconds=round(inputs.teacher_logits_seconds, 2),
        temperature=settings.temperature,
        alpha=settings.alpha,
    )
    return _export_with_report(settings, "student", student, splits, export_dir, report)


def tune(settings, strategy):
    """`tune`: keras-tuner search over the temperature and alpha of the
    student's distillation; the teacher's logits and the datasets are
    prepared once for all trials (see `kd_tf.tuning`).

    Args:
        settings: parsed flags (see `kd_tf.config`).
        strategy: the `tf.distribute.Strategy` every trial trains under.

    Returns:
        The search report (also written to `<tune_dir>/report.json`).
    """
    started = time.perf_counter()
    model_name = settings.model or models.DEFAULT_STUDENT
    tuning.check_tune_dir(settings.tune_dir)
    inputs = prepare_distillation(settings)

    def build(temperature, alpha):
        return build_distiller(settings, inputs, model_name, temperature, alpha)

    trials = tuning.search(
        settings, build, inputs.train, inputs.validation, inputs.steps_per_epoch, strategy
    )
    report = {
        "stage": "tune",
        "flags": config.to_dict(settings),
        "data": _data_summary(settings, inputs.splits),
        "model": model_name,
        "tuner": settings.tuner,
        "objective": tuning.OBJECTIVE,
        "teacher_dir": settings.teacher_dir,
        "teacher_logits": inputs.mode,
        "teacher_logits_seconds": round(inputs.teacher_logits_seconds, 2),
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
    export_dir = export.resolve_export_dir(
        settings.export_dir, settings.saved_models_dir, "compare"
    )
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
        return run(sub_settings)

    reports = {"teacher": sub_run("teacher")}
    reports["student"] = sub_run("student", f"--teacher_dir={reports['teacher']['export_dir']}")
    reports["scratch"] = sub_run("scratch")

    rows = reporting.summary_rows(reports)
    table = reporting.markdown_table(rows)
    os.makedirs(export_dir)
    reporting.plot_comparison(
        {f"{name} ({r['model']})": r["epochs"] for name, r in reports.items()},
        os.path.join(export_dir, "comparison.png"),
    )
    summary = {
        "stage": "compare",
        "flags": config.to_dict(settings),
        "runs": {name: r["export_dir"] for name, r in reports.items()},
        "summary": rows,
    }
    reporting.write_json(summary, os.path.join(export_dir, "report.json"))
    with open(os.path.join(export_dir, "summary.md"), "w") as f:
        f.write(table + "\n")
    logging.info("comparison written to %s\n%s", export_dir, table)
    summary["export_dir"] = export_dir
    return summary


def run(settings):
    """Runs the stage named by `settings.stage` and returns its report."""
    if settings.stage in ("teacher", "scratch"):
        return train_supervised(settings, settings.stage)
    if settings.stage == "student":
        return distill_student(settings)
    if settings.stage == "tune":
        return tune(settings, tf.distribute.get_strategy())
    return compare(settings)
