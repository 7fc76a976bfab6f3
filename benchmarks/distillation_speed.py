"""Distillation speed: kd_tf's student stage against `keras.distillation.Distiller`.

On real MNIST, with one `seed_cnn` teacher SavedModel, the `seed_mlp` student, batch 128,
T = 5, alpha = 0.7, Adam (1e-3, constant), `--epochs` epochs each, it runs side by side:

1. kd_tf student stage, cached teacher logits (`--teacher_logits=cached`);
2. kd_tf student stage, online teacher (`--teacher_logits=online`);
3. `keras.distillation.Distiller` with `LogitsDistillation` (the teacher loaded with
   `keras.layers.TFSMLayer`, called on every step);
4. plain `model.fit` of the student on hard labels (the floor: a step with no teacher).

Rows 3 and 4 get the same `tf.data` pipelines, optimiser, `steps_per_execution` and
validation split as kd_tf. Rows alternate (1 2 3 4 1 2 3 4 ...) over `--rounds` rounds and
the table shows medians: whole-stage seconds (from loading the data to the end of training,
teacher loading and teacher logits included), median training seconds per epoch (validation
excluded), test accuracy, and each row's speed-up over row 3.

The teacher rows compare kd_tf's teacher stage with plain `model.fit` of the same model
(`seed_cnn`, Adadelta 1.0 as `flags/seed_reference_teacher.cfg`) on the same pipeline,
alternating A B A B; the first kd_tf teacher export is the teacher of the student rows.

`--levers` then measures, one change at a time, what each lever gives the cached student.

Usage:

    python benchmarks/distillation_speed.py --out=/tmp/kd_tf_speed

Writes `<out>/results.json` and prints the tables.
"""

import os
import platform
import statistics
import time

import keras
import tensorflow as tf
from absl import app, flags, logging

from kd_tf import (
    config,
    data,
    distillation,
    distillation_losses,
    export,
    logits_cache,
    models,
    pipelines,
    reporting,
    stages,
    training,
)

_OUT = flags.DEFINE_string("out", "/tmp/kd_tf_speed", "Directory for exports, logs and results.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds of the alternating rows.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Student epochs per row.")
_TEACHER_EPOCHS = flags.DEFINE_integer("teacher_epochs", 2, "Epochs of each teacher-row run.")
_STEPS_PER_EXECUTION = flags.DEFINE_integer(
    "steps_per_execution", 8, "steps_per_execution of every row (all rows get the same)."
)
_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "train_examples", None, "Cap on the training split (smoke runs only)."
)
_LEVERS = flags.DEFINE_bool("levers", True, "Also measure the levers one at a time.")
_LEVER_EPOCHS = flags.DEFINE_integer("lever_epochs", 3, "Epochs per lever run.")

STUDENT = "seed_mlp"
TEACHER = "seed_cnn"
TEMPERATURE = 5.0
ALPHA = 0.7
BATCH = 128
SEED = 0


def _common_flags(out):
    flags_ = [
        f"--batch_size={BATCH}",
        f"--steps_per_execution={_STEPS_PER_EXECUTION.value}",
        f"--seed={SEED}",
        f"--log_dir={out}/logs",
    ]
    if _TRAIN_EXAMPLES.value:
        flags_.append(f"--train_examples={_TRAIN_EXAMPLES.value}")
    return flags_


def _load_splits():
    return data.load_splits(
        "mnist",
        "auto",
        validation_examples=5000,
        train_examples=_TRAIN_EXAMPLES.value,
        tfds_data_dir=None,
        idx_dir=None,
    )


def _student_optimizer(steps):
    return training.make_optimizer(
        "adam", 1e-3, "constant", steps_per_epoch=steps, epochs=_EPOCHS.value
    )


def _row(name, seconds, epochs, test_accuracy=None):
    row = {
        "row": name,
        "stage_seconds": round(seconds, 2),
        "epoch_seconds": round(statistics.median(e["train_seconds"] for e in epochs), 3),
    }
    if test_accuracy is not None:
        row["test_accuracy"] = test_accuracy
    return row


def kd_tf_teacher(out, tag):
    report = stages.run(
        config.parse(
            [
                "--flagfile=flags/seed_reference_teacher.cfg",
                f"--epochs={_TEACHER_EPOCHS.value}",
                f"--export_dir={out}/teacher_{tag}",
                *_common_flags(out),
            ]
        )
    )
    return report, _row("kd_tf teacher stage", report["stage_seconds"], report["epochs"])


def plain_teacher_fit():
    started = time.perf_counter()
    splits = _load_splits()
    keras.utils.set_random_seed(SEED)
    model = models.build_model(TEACHER, splits.image_shape, splits.num_classes)
    optimizer = training.make_optimizer(
        "adadelta",
        1.0,
        "constant",
        steps_per_epoch=pipelines.steps_per_epoch(len(splits.train), BATCH),
        epochs=_TEACHER_EPOCHS.value,
    )
    epochs = _fit(model, splits, optimizer, _TEACHER_EPOCHS.value, _hard_label_compile_args())
    return _row("plain model.fit", time.perf_counter() - started, epochs)


def kd_tf_student(out, teacher_dir, mode, tag):
    report = stages.run(
        config.parse(
            [
                "--stage=student",
                f"--model={STUDENT}",
                f"--teacher_dir={teacher_dir}",
                f"--teacher_logits={mode}",
                f"--epochs={_EPOCHS.value}",
                f"--temperature={TEMPERATURE}",
                f"--alpha={ALPHA}",
                "--optimizer=adam",
                "--learning_rate=1e-3",
                "--lr_schedule=constant",
                f"--export_dir={out}/student_{mode}_{tag}",
                *_common_flags(out),
            ]
        )
    )
    return _row(
        f"kd_tf student, {mode} teacher logits",
        report["stage_seconds"],
        report["epochs"],
        report["test_accuracy"],
    )


def _fit(model, splits, optimizer, epochs, compile_args):
    """Compiles `model` with kd_tf's `steps_per_execution` and fits it on kd_tf's
    pipelines; returns the epoch records."""
    model.compile(
        optimizer=optimizer, steps_per_execution=_STEPS_PER_EXECUTION.value, **compile_args
    )
    recorder = training.EpochRecorder()
    model.fit(
        pipelines.training_dataset(splits.train, BATCH, seed=SEED),
        epochs=epochs,
        steps_per_epoch=pipelines.steps_per_epoch(len(splits.train), BATCH),
        validation_data=pipelines.evaluation_dataset(
splits.validation, 1024),
        callbacks=[recorder],
        verbose=0,
    )
    return recorder.epochs


def _fit_student(model, splits, compile_args):
    """`_fit` with the student's optimiser and `--epochs`."""
    steps = pipelines.steps_per_epoch(len(splits.train), BATCH)
    return _fit(model, splits, _student_optimizer(steps), _EPOCHS.value, compile_args)


def _test_accuracy(student, splits):
    logits = student.predict(splits.test.images, batch_size=1024, verbose=0)
    return training.evaluate_logits(logits, splits.test.labels)["accuracy"]


def _hard_label_compile_args():
    return {
        "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    }


def keras_distiller(teacher_dir):
    started = time.perf_counter()
    splits = _load_splits()
    images = keras.Input(splits.image_shape, dtype="uint8", name="images")
    served = keras.layers.TFSMLayer(teacher_dir, call_endpoint="serving_default")(images)
    teacher = keras.Model(images, served["logits"], name="teacher")
    keras.utils.set_random_seed(SEED)
    student = models.build_model(STUDENT, splits.image_shape, splits.num_classes)
    distiller = keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        # An instance: the string default "kl_divergence" resolves to a function that
        # LogitsDistillation applies to the scaled logits without their softmax.
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=TEMPERATURE, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=1.0 - ALPHA,
    )
    epochs = _fit_student(distiller, splits, _hard_label_compile_args())
    seconds = time.perf_counter() - started
    return _row("keras.distillation.Distiller", seconds, epochs, _test_accuracy(student, splits))


def plain_student_fit():
    started = time.perf_counter()
    splits = _load_splits()
    keras.utils.set_random_seed(SEED)
    student = models.build_model(STUDENT, splits.image_shape, splits.num_classes)
    epochs = _fit_student(student, splits, _hard_label_compile_args())
    seconds = time.perf_counter() - started
    return _row("plain model.fit, hard labels", seconds, epochs, _test_accuracy(student, splits))


def _medians(runs):
    """Per row name, the medians over rounds."""
    table = {}
    for row in runs:
        table.setdefault(row["row"], []).append(row)
    medians = []
    for name, rows in table.items():
        median = {
            key: round(statistics.median(r[key] for r in rows), 4)
            for key in ("stage_seconds", "epoch_seconds", "test_accuracy")
            if key in rows[0]
        }
        medians.append({"row": name, **median, "runs": len(rows)})
    return medians


def _with_ratios(medians, reference):
    base = next(row for row in medians if row["row"] == reference)
    for row in medians:
        row["speedup_stage"] = round(base["stage_seconds"] / row["stage_seconds"], 2)
        row["speedup_epoch"] = round(base["epoch_seconds"] / row["epoch_seconds"], 2)
    return medians


def _slices_pipeline(splits, train_logits, prefetch=True):
    """The classic in-memory pipeline: slices -> cache -> shuffle -> batch."""
    dataset = (
        tf.data.Dataset.from_tensor_slices(
            ((splits.train.images, train_logits), splits.train.labels)
        )
        .cache()
        .shuffle(len(splits.train), seed=SEED)
        .repeat()
        .batch(BATCH)
    )
    return pipelines.prefetched(dataset) if prefetch else dataset


def _lookup_pipeline(splits, train_logits):
    """The anti-pattern: examples carry an index, and each batch looks its
    logits up in a separate table."""
    table = tf.constant(train_logits)
    indices = tf.range(len(splits.train), dtype=tf.int64)
    return pipelines.prefetched(
        tf.data.Dataset.from_tensor_slices(((splits.train.images, indices), splits.train.labels))
        .cache()
        .shuffle(len(splits.train), seed=SEED)
        .repeat()
        .batch(BATCH)
        .map(lambda features, labels: ((features[0], tf.gather(table, features[1])), labels))
    )


def _kd_tf_pipeline(splits, train_logits):
    return pipelines.training_dataset(
        splits.train, BATCH, seed=SEED, logits=logits_cache.LogitsTable(train_logits[:, None])
    )


def _lever_run(splits, logits, *, pipeline, steps_per_execution, jit_compile, eval_batch_size):
    """One cached-logit distillation fit with one lever changed; returns the
    median training seconds per epoch after the first (which traces)."""
    keras.utils.set_random_seed(SEED)
    steps = pipelines.steps_per_epoch(len(splits.train), BATCH)
    student = models.build_model(STUDENT, splits.image_shape, splits.num_classes)
    distiller = distillation.Distiller(
        student, [("kd", distillation_losses.KD(TEMPERATURE), 1.0)], ALPHA
    )
    distiller.compile(
        optimizer=_student_optimizer(steps),
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    recorder = training.EpochRecorder()
    distiller.fit(
        pipeline(splits, logits["train"]),
        epochs=_LEVER_EPOCHS.value,
        steps_per_epoch=steps,
        validation_data=pipelines.evaluation_dataset(
            splits.validation,
            eval_batch_size,
            logits=logits_cache.LogitsTable(logits["validation"][:, None]),
        ),
        callbacks=[recorder],
        verbose=0,
    )
    return statistics.median(e["train_seconds"] for e in recorder.epochs[1:])


def _logits_seconds(teacher, images, batch_size):
    started = time.perf_counter()
    teacher.predict_logits(images, batch_size=batch_size)
    return time.perf_counter() - started


def measure_levers(teacher_dir):
    """Each lever alone against kd_tf's settings, alternating over `--rounds`
    rounds; returns rows with the median seconds."""
    splits = _load_splits()
    teacher = export.load_serving_model(teacher_dir)
    logits = {
        "train": teacher.predict_logits(splits.train.images),
        "validation": teacher.predict_logits(splits.validation.images),
    }
    spe = _STEPS_PER_EXECUTION.value
    kd_tf = {
        "pipeline": _kd_tf_pipeline,
        "steps_per_execution": spe,
        "jit_compile": False,
        "eval_batch_size": 1024,
    }
    variants = {
        f"kd_tf: index-gathered (images, logits, labels), steps_per_execution={spe}": {},
        "steps_per_execution=1": {"steps_per_execution": 1},
        "steps_per_execution=32": {"steps_per_execution": 32},
        "jit_compile=True": {"jit_compile": True},
        "slices -> cache -> shuffle pipeline": {"pipeline": _slices_pipeline},
        "slices pipeline without prefetch": {
            "pipeline": lambda s, t: _slices_pipeline(s, t, prefetch=False)
        },
        "logits looked up per batch in a separate table": {"pipeline": _lookup_pipeline},
    }
    epoch_seconds = {name: [] for name in variants}
    logit_batches = (256, 1024, 4096)
    logit_seconds = {batch: [] for batch in logit_batches}
    for _ in range(_ROUNDS.value):
        for name, change in variants.items():
            epoch_seconds[name].append(_lever_run(splits, logits, **{**kd_tf, **change}))
            logging.info("lever %s: %.3f s per epoch", name, epoch_seconds[name][-1])
        for batch in logit_batches:
            logit_seconds[batch].append(_logits_seconds(teacher, splits.train.images, batch))
    rows = [
        {
            "lever": name,
            "measure": "training seconds per epoch",
            "seconds": round(statistics.median(times), 3),
        }
        for name, times in epoch_seconds.items()
    ]
    rows += [
        {
            "lever": f"teacher logits with batch {batch}",
            "measure": "seconds for the training split",
            "seconds": round(statistics.median(times), 2),
        }
        for batch, times in logit_seconds.items()
    ]
    return rows


def main(argv):
    del argv
    out = _OUT.value
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()

    teacher_runs = []
    teacher_dir = None
    for round_ in range(_ROUNDS.value):
        report, row = kd_tf_teacher(out, round_)
        teacher_runs.append(row)
        teacher_dir = teacher_dir or report["export_dir"]
        teacher_runs.append(plain_teacher_fit())

    student_runs = []
    for round_ in range(_ROUNDS.value):
        student_runs.append(kd_tf_student(out, teacher_dir, "cached", round_))
        student_runs.append(kd_tf_student(out, teacher_dir, "online", round_))
        student_runs.append(keras_distiller(teacher_dir))
        student_runs.append(plain_student_fit())

    teacher_table = _with_ratios(_medians(teacher_runs), "plain model.fit")
    student_table = _with_ratios(_medians(student_runs), "keras.distillation.Distiller")
    levers = measure_levers(teacher_dir) if _LEVERS.value else []
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "student": student_table,
        "teacher": teacher_table,
        "levers": levers,
        "runs": {"student": student_runs, "teacher": teacher_runs},
    }
    reporting.write_json(results, os.path.join(out, "results.json"))
    print(reporting.markdown_table(student_table))
    print()
    print(reporting.markdown_table(teacher_table))
    if levers:
        print()
        print(reporting.markdown_table(levers))
    print(f"\nbenchmark wall: {results['wall_seconds']} s")


if __name__ == "__main__":
    app.run(main)
