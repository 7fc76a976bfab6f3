"""`student`: distils the teacher (`teacher_dir`), or the ensemble of
teachers it lists, into the student.

`prepare_distillation` (shared with `tune`) loads the teachers and the data,
checks the hints against both models and each teacher on the data
(`Teacher.check`: refused before any training when it cannot teach), builds
the datasets that carry the teachers' outputs and measures the teachers on
the test split for the report; `build_distiller` puts a fresh student into a
compiled `Distiller` with the loss terms of a `config.DistillationConfig`.
"""

import contextlib
from typing import NamedTuple

import keras

from kd_tf import (
    data,
    determinism,
    distillation,
    distillation_losses,
    distribution,
    hints,
    models,
    pipelines,
    precision,
    training,
)
from kd_tf import teacher as teacher_lib
from kd_tf.stages.training_run import TrainingRun, load_data


class DistillationInputs(NamedTuple):
    """What a distillation run trains on (a `TrainingInputs` plus the
    teachers, and the checked `hints.HintPair`s)."""

    splits: data.DataSplits
    train: object
    validation: object
    steps_per_epoch: int
    teachers: teacher_lib.Teachers
    logits: teacher_lib.TeacherLogits
    hint_pairs: list

    def report_fields(self):
        """The teachers' fields of the student and tune reports."""
        return self.teachers.report_fields(self.logits)


@contextlib.contextmanager
def prepare_distillation(config, strategy, policy):
    """Loads the teachers and the data, checks the hints (`--hint_layers`)
    against the teacher and the run's student, checks each teacher on
    the data (see `kd_tf.teacher_check`), computes the teachers' outputs once
    where they can be cached and measures them on the test split (under the
    dtype policy `policy`, see `precision.graph_rewrite`), and yields
    `DistillationInputs`; the shards are removed when the block ends,
    however it ends.

    Usage:

    ```python
    with prepare_distillation(config, strategy, "float32") as inputs:
        distiller = build_distiller(config, inputs, "seed_mlp", "float32")
    ```
    """
    runtime, opt = config.runtime, config.optimization
    distill = config.distillation
    with teacher_lib.Teachers.load(
        distill.teacher_dir,
        strategy,
        config.stage,
        pixel_range=distill.teacher_pixel_range,
        output=distill.teacher_output,
        class_order=distill.teacher_class_order,
        min_accuracy=distill.min_teacher_accuracy,
        layers=bool(distill.hint_layers),
    ) as teachers:
        determinism.make_reproducible(runtime.seed, deterministic=runtime.deterministic)
        splits = load_data(config.data)
        teachers.check_fits(splits)
        hint_pairs = _hint_pairs(config, teachers.members[0], splits)
        views, random_augment = pipelines.augmentation(
            config.data.augment, config.data.augment_views
        )
        with precision.graph_rewrite(policy):
            teachers.check(splits, opt.eval_batch_size)
            logits = teachers.datasets(
                splits.train,
                splits.validation,
                views=views,
                random_augment=random_augment,
                distillation=config.distillation,
                batch_size=opt.batch_size,
                eval_batch_size=opt.eval_batch_size,
                seed=runtime.seed,
                hint_pairs=hint_pairs,
            )
            teachers.measure_test(splits.test, opt.eval_batch_size)
        yield DistillationInputs(
            splits=splits,
            train=logits.train,
            validation=logits.validation,
            steps_per_epoch=pipelines.steps_per_epoch(len(splits.train), opt.batch_size),
            teachers=teachers,
            logits=logits,
            hint_pairs=hint_pairs,
        )


def _hint_pairs(config, teacher, splits):
    """`hints.plan` of `--hint_layers`, read on `teacher` (a `Teacher`; hints
    take one) and the run's student built for it (none without hints)."""
    if not config.distillation.hint_layers:
        return []
    model_name = config.model.model or models.DEFAULT_STUDENT
    student = models.build_model(model_name, splits.image_shape, splits.num_classes)
    return hints.plan(
        config.distillation.hint_layers, teacher.keras_model, student, teacher.model.path
    )


def build_distiller(config, inputs, model_name, policy, distill=None):
    """A fresh student `model_name` in a `Distiller` compiled under the dtype
    policy `policy` (see `kd_tf.precision`), with the loss of `distill` (a
    `config.DistillationConfig`; default: the run's).

    Returns:
        The compiled `distillation.Distiller`; its `.student` is the model.
    """
    splits = inputs.splits
    distill = distill or config.distillation
    online = inputs.logits.mode == "online"
    with precision.policy(policy):
        student = models.build_model(model_name, splits.image_shape, splits.num_classes)
        distiller = distillation.Distiller(
            student,
            distillation_losses.logit_terms(distill)
            + hints.hint_terms(inputs.hint_pairs, distill.hint_weight),
            alpha=distill.alpha,
            teacher=inputs.logits.outputs if online else None,
            steps_per_epoch=inputs.steps_per_epoch,
            teachers=len(inputs.teachers.members),
        )
        # Built, so that its weights can be saved (keras-tuner checkpoints a trial's best epoch).
        distiller.build((None, *splits.image_shape))
        distiller.compile(
            optimizer=training.optimizer_for(config.optimization, inputs.steps_per_epoch),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            steps_per_execution=distribution.steps_per_execution(
                config.optimization.steps_per_execution, inputs.steps_per_epoch
            ),
        )
    return distiller


def run(config):
    """`--stage=student`: returns the report (also written into the export)."""
    model_name = config.model.model or models.DEFAULT_STUDENT
    distill = config.distillation
    with TrainingRun(config, "student", model_name) as run, run.not_exported():
        with prepare_distillation(config, run.strategy, run.precision) as inputs:
            with run.strategy.scope():
                distiller = build_distiller(config, inputs, model_name, run.precision)
            epochs, best_epoch = run.fit(distiller, distiller.student, inputs)
            fields = inputs.report_fields()
        fields.update(
            temperature=distill.temperature,
            alpha=distill.alpha,
            distillation_loss=distiller.term_settings(),
            mixup_alpha=distill.mixup_alpha,
        )
        return run.finish(distiller.student, inputs.splits, epochs, best_epoch, fields)
