"""kd_tf's student stage against `keras.distillation.Distiller`, and the levers of its speed.

`suite` (`python -m benchmarks.run vs_keras`): on real MNIST, with one `seed_cnn` teacher
SavedModel (trained by kd_tf's teacher stage in the same run), the `seed_mlp` student,
batch 128, T = 5, alpha = 0.7, Adam (1e-3, constant), `EPOCHS` epochs, rows alternating
1 2 3 4 1 2 3 4 over `settings.rounds` rounds, in one process:

1. kd_tf student stage, `--teacher_logits=cached` (the teacher's logits pass included);
2. kd_tf student stage, `--teacher_logits=online`;
3. `keras.distillation.Distiller` with `LogitsDistillation` (the teacher loaded with
   `keras.layers.TFSMLayer` and run on every step);
4. plain `model.fit` of the student on hard labels (the floor: a step with no teacher).

Rows 3 and 4 get kd_tf's `tf.data` pipelines, optimiser, `steps_per_execution` and
validation split, so the rows differ only in how the teacher's logits reach the loss. Row 3
is given `LogitsDistillation(loss=keras.losses.KLDivergence())`: with its default
`loss="kl_divergence"` Keras 3.15 resolves the string to a plain function that it applies
to the temperature-scaled logits without their softmax. Stage seconds run from loading the
data to the end of training (teacher loading and logits included, export excluded); epoch
seconds are the median training seconds of an epoch. Medians over rounds, and each row's
speed-up over row 3: kd_tf's cached row must stay >= `REQUIRED_SPEEDUP` times faster over
the stage. The teacher rows compare kd_tf's teacher stage with plain `model.fit` of the
same model (`flags/seed_reference_teacher.cfg`) on the same pipeline.

`levers` (`python -m benchmarks.run levers`): one change at a time against the cached row's
settings (`steps_per_execution`, XLA, the pipeline's shape, `prefetch`, the teacher's batch).
"""

import dataclasses
import statistics
import time

import keras
import tensorflow as tf

from kd_tf import (
    command_line,
    data,
    distillation,
    distillation_losses,
    distribution,
    export,
    logits_cache,
    models,
    pipelines,
    stages,
    training,
)

STUDENT, TEACHER = "seed_mlp", "seed_cnn"
TEMPERATURE, ALPHA, BATCH, SEED = 5.0, 0.7, 128, 0
REQUIRED_SPEEDUP = 3.5


@dataclasses.dataclass(frozen=True)
class Setup:
    """The sizes of one benchmark run (`smoke`: a few hundred images, one epoch)."""

    out: str
    rounds: int
    epochs: int = 10
    teacher_epochs: int = 2
    lever_epochs: int = 3
    steps_per_execution: int = 8
    train_examples: int | None = None

    @classmethod
    def of(cls, settings):
        if settings.smoke:
            return cls(settings.out, settings.rounds, 1, 1, 2, 8, 256)
        return cls(settings.out, settings.rounds)


def _common_flags(setup):
    argv = [f"--batch_size={BATCH}", f"--steps_per_execution={setup.steps_per_execution}",
            f"--seed={SEED}", f"--log_dir={setup.out}/logs", "--overwrite"]
    return argv + ([f"--train_examples={setup.train_examples}"] if setup.train_examples else [])


def _splits(setup):
    return data.load_splits(
        "mnist", "auto", validation_examples=5000, train_examples=setup.train_examples,
        tfds_data_dir=None, idx_dir=None,
    )


def _row(name, seconds, epochs, test_accuracy=None):
    row = {"row": name, "stage_seconds": round(seconds, 2),
           "epoch_seconds": round(statistics.median(e["train_seconds"] for e in epochs), 3)}
    return row if test_accuracy is None else {**row, "test_accuracy": test_accuracy}


def kd_tf_teacher(setup, tag):
    report = stages.run(command_line.parse([
        "--flagfile=flags/seed_reference_teacher.cfg", f"--epochs={setup.teacher_epochs}",
        f"--export_dir={setup.out}/teacher_{tag}", *_common_flags(setup),
    ]))
    return report, _row("kd_tf teacher stage", report["stage_seconds"], report["epochs"])


def kd_tf_student(setup, teacher_dir, mode, tag):
    report = stages.run(command_line.parse([
        "--stage=student", f"--model={STUDENT}", f"--teacher_dir={teacher_dir}",
        f"--teacher_logits={mode}", f"--epochs={setup.epochs}", f"--temperature={TEMPERATURE}",
        f"--alpha={ALPHA}", "--optimizer=adam", "--learning_rate=1e-3", "--lr_schedule=constant",
        f"--export_dir={setup.out}/student_{mode}_{tag}", *_common_flags(setup),
    ]))
    name = f"kd_tf student, {mode} teacher logits"
    return _row(name, report["stage_seconds"], report["epochs"], report["test_accuracy"])


def _hard_labels():
    return {"loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}


def _fit(setup, model, splits, optimizer, epochs, compile_args):
    """`model` compiled with kd_tf's `steps_per_execution`, fitted on kd_tf's pipelines."""
    steps = pipelines.steps_per_epoch(len(splits.train), BATCH)
    model.compile(
        optimizer=optimizer,
        steps_per_execution=distribution.steps_per_execution(setup.steps_per_execution, steps),
        **compile_args,
    )
    recorder = training.EpochRecorder()
    model.fit(
        pipelines.training_dataset(splits.train, BATCH, seed=SEED), epochs=epochs,
        steps_per_epoch=steps,
        validation_data=pipelines.evaluation_dataset(splits.validation, 1024),
        callbacks=[recorder], verbose=0,
    )
    return recorder.epochs


def _student_optimizer(setup, splits):
    steps = pipelines.steps_per_epoch(len(splits.train), BATCH)
    return training.make_optimizer("adam", 1e-3, "constant", steps_per_epoch=steps,
                                   epochs=setup.epochs)


def _test_accuracy(student, splits):
    logits = student.predict(splits.test.images, batch_size=1024, verbose=0)
    return training.evaluate_logits(logits, splits.test.labels)["accuracy"]


def plain_teacher_fit(setup):
    started = time.perf_counter()
    splits = _splits(setup)
    keras.utils.set_random_seed(SEED)
    model = models.build_model(TEACHER, splits.image_shape, splits.num_classes)
    optimizer = training.make_optimizer(
        "adadelta", 1.0, "constant", epochs=setup.teacher_epochs,
        steps_per_epoch=pipelines.steps_per_epoch(len(splits.train), BATCH),
    )
    epochs = _fit(setup, model, splits, optimizer, setup.teacher_epochs, _hard_labels())
    return _row("plain model.fit", time.perf_counter() - started, epochs)


def keras_distiller(setup, teacher_dir):
    started = time.perf_counter()
    splits = _splits(setup)
    images = keras.Input(splits.image_shape, dtype="uint8", name="images")
    served = keras.layers.TFSMLayer(teacher_dir, call_endpoint="serving_default")(images)
    keras.utils.set_random_seed(SEED)
    student = models.build_model(STUDENT, splits.image_shape, splits.num_classes)
    distiller = keras.distillation.Distiller(
        teacher=keras.Model(images, served["logits"], name="teacher"),
        student=student,
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=TEMPERATURE, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=1.0 - ALPHA,
    )
    epochs = _fit(setup, distiller, splits, _student_optimizer(setup, splits), setup.epochs,
                  _hard_labels())
    seconds = time.perf_counter() - started
    return _row("keras.distillation.Distiller", seconds, epochs, _test_accuracy(student, splits))


def plain_student_fit(setup):
    started = time.perf_counter()
    splits = _splits(setup)
    keras.utils.set_random_seed(SEED)
    student = models.build_model(STUDENT, splits.image_shape, splits.num_classes)
    epochs = _fit(setup, student, splits, _student_optimizer(setup, splits), setup.epochs,
                  _hard_labels())
    seconds = time.perf_counter() - started
    return _row("plain model.fit, hard labels", seconds, epochs, _test_accuracy(student, splits))


def _medians(runs, reference):
    """Per row name, the medians over rounds and the speed-ups over `reference`."""
    table = {}
    for row in runs:
        table.setdefault(row["row"], []).append(row)
    medians = [
        {"row": name, "runs": len(rows), **{
            key: round(statistics.median(r[key] for r in rows), 4)
            for key in ("stage_seconds", "epoch_seconds", "test_accuracy") if key in rows[0]
        }}
        for name, rows in table.items()
    ]
    base = next(row for row in medians if row["row"] == reference)
    for row in medians:
        row["speedup_stage"] = round(base["stage_seconds"] / row["stage_seconds"], 2)
        row["speedup_epoch"] = round(base["epoch_seconds"] / row["epoch_seconds"], 2)
    return medians


def suite(settings):
    """The student and teacher rows (see the module doc)."""
    setup = Setup.of(settings)
    teacher_runs, teacher_dir = [], None
    for round_ in range(setup.rounds):
        report, row = kd_tf_teacher(setup, round_)
        teacher_dir = teacher_dir or report["export_dir"]
        teacher_runs += [row, plain_teacher_fit(setup)]
    student_runs = []
    for round_ in range(setup.rounds):
        student_runs += [
            kd_tf_student(setup, teacher_dir, "cached", round_),
            kd_tf_student(setup, teacher_dir, "online", round_),
            keras_distiller(setup, teacher_dir),
            plain_student_fit(setup),
        ]
    student = _medians(student_runs, "keras.distillation.Distiller")
    cached = next(row for row in student if row["row"].endswith("cached teacher logits"))
    return {
        "cached_speedup_over_keras": cached["speedup_stage"],
        "required_speedup": REQUIRED_SPEEDUP,
        "met": cached["speedup_stage"] >= REQUIRED_SPEEDUP,
        "rows": student,
        "teacher_rows": _medians(teacher_runs, "plain model.fit"),
        "runs": {"student": student_runs, "teacher": teacher_runs},
    }


def _slices_pipeline(splits, train_logits, prefetch=True):
    """The classic in-memory pipeline: slices -> cache -> shuffle -> batch."""
    dataset = (
        tf.data.Dataset.from_tensor_slices(
            ((splits.train.images, train_logits), splits.train.labels)
        )
        .cache().shuffle(len(splits.train), seed=SEED).repeat().batch(BATCH)
    )
    return pipelines.prefetched(dataset) if prefetch else dataset


def _lookup_pipeline(splits, train_logits):
    """Examples carry an index, and each batch looks its logits up in a separate table."""
    table = tf.constant(train_logits)
    indices = tf.range(len(splits.train), dtype=tf.int64)
    return pipelines.prefetched(
        tf.data.Dataset.from_tensor_slices(((splits.train.images, indices), splits.train.labels))
        .cache().shuffle(len(splits.train), seed=SEED).repeat().batch(BATCH)
        .map(lambda features, labels: ((features[0], tf.gather(table, features[1])), labels))
    )


def _kd_tf_pipeline(splits, train_logits):
    table = logits_cache.LogitsTable(train_logits[:, None])
    return pipelines.training_dataset(splits.train, BATCH, seed=SEED, logits=table)


def _lever_run(setup, splits, logits, *, pipeline, steps_per_execution, jit_compile):
    """One cached-logit distillation fit with one lever changed; returns the
    median training seconds per epoch after the first (which traces)."""
    keras.utils.set_random_seed(SEED)
    student = models.build_model(STUDENT, splits.image_shape, splits.num_classes)
    distiller = distillation.Distiller(
        student, [("kd", distillation_losses.KD(TEMPERATURE), 1.0)], ALPHA
    )
    distiller.compile(optimizer=_student_optimizer(setup, splits),
                      steps_per_execution=steps_per_execution, jit_compile=jit_compile)
    recorder = training.EpochRecorder()
    validation = logits_cache.LogitsTable(logits["validation"][:, None])
    distiller.fit(
        pipeline(splits, logits["train"]), epochs=setup.lever_epochs,
        steps_per_epoch=pipelines.steps_per_epoch(len(splits.train), BATCH),
        validation_data=pipelines.evaluation_dataset(splits.validation, 1024, logits=validation),
        callbacks=[recorder], verbose=0,
    )
    return statistics.median(e["train_seconds"] for e in recorder.epochs[1:])


def _lever_variants(spe):
    return {
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


def levers(settings):
    """Each lever alone against kd_tf's settings, alternating over rounds,
    with a teacher trained here (median seconds)."""
    setup = Setup.of(settings)
    report, _ = kd_tf_teacher(setup, "levers")
    splits = _splits(setup)
    teacher = export.load_serving_model(report["export_dir"])
    logits = {name: teacher.predict_logits(getattr(splits, name).images)
              for name in ("train", "validation")}
    kd_tf = {"pipeline": _kd_tf_pipeline, "steps_per_execution": setup.steps_per_execution,
             "jit_compile": False}
    variants = _lever_variants(setup.steps_per_execution)
    epoch_seconds = {name: [] for name in variants}
    logit_seconds = {batch: [] for batch in (256, 1024, 4096)}
    for _ in range(setup.rounds):
        for name, change in variants.items():
            epoch_seconds[name].append(_lever_run(setup, splits, logits, **{**kd_tf, **change}))
        for batch in logit_seconds:
            started = time.perf_counter()
            teacher.predict_logits(splits.train.images, batch_size=batch)
            logit_seconds[batch].append(time.perf_counter() - started)
    rows = [
        {"lever": name, "measure": "training seconds per epoch",
         "seconds": round(statistics.median(times), 3)}
        for name, times in epoch_seconds.items()
    ]
    rows += [
        {"lever": f"teacher logits with batch {batch}",
         "measure": "seconds for the training split",
         "seconds": round(statistics.median(times), 2)}
        for batch, times in logit_seconds.items()
    ]
    return {"rows": rows}
