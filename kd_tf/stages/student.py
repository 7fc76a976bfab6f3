"""`student`: distils the teacher (`teacher_dir`) into the student.

`prepare_distillation` (shared with `tune`) loads the teacher and the data,
checks the teacher on the data (`Teacher.check`: refused before any training
when it cannot teach) and builds the datasets that carry the teacher's logits; `build_distiller`
puts a fresh student into a compiled `Distiller`.
"""

import contextlib
from typing import NamedTuple

import keras

from kd_tf import (
    data,
    determinism,
    distillation,
    distribution,
    models,
    pipelines,
    precision,
    training,
)
from kd_tf import teacher as teacher_lib
from kd_tf.stages.training_run import TrainingRun, load_data


class DistillationInputs(NamedTuple):
    """What a distillation run trains on (a `TrainingInputs` plus the teacher)."""

    splits: data.DataSplits
    train: object
    validation: object
    steps_per_epoch: int
    teacher: teacher_lib.Teacher
    logits: teacher_lib.TeacherLogits

    def report_fields(self):
        """The teacher's fields of the student and tune reports."""
        return self.teacher.report_fields(self.logits)


@contextlib.contextmanager
def prepare_distillation(config, strategy, policy):
    """Loads the teacher and the data, checks the teacher on the data (see
    `kd_tf.teacher_check`), computes the teacher's logits once where
    they can be cached (under the dtype policy `policy`, see
    `precision.graph_rewrite`), and yields `DistillationInputs`; the logit
    shards are removed when the block ends, however it ends.

    Usage:

    ```python
    with prepare_distillation(config, strategy, "float32") as inputs:
        distiller = build_distiller(config, inputs, "seed_mlp", 4.0, 0.9, "float32")
    ```
    """
    runtime, opt = config.runtime, config.optimization
    distill = config.distillation
    with teacher_lib.Teacher.load(
        distill.teacher_dir,
        strategy,
        config.stage,
        pixel_range=distill.teacher_pixel_range,
        output=distill.teacher_output,
        class_order=distill.teacher_class_order,
        min_accuracy=distill.min_teacher_accuracy,
    ) as teacher:
        determinism.make_reproducible(runtime.seed, deterministic=runtime.deterministic)
        splits = load_data(config.data)
        teacher.check_fits(splits)
        views, random_augment = pipelines.augmentation(
            config.data.augment, config.data.augment_views
        )
        with precision.graph_rewrite(policy):
            teacher.check(splits, opt.eval_batch_size)
            logits = teacher.datasets(
                splits.train,
                splits.validation,
                views=views,
                random_augment=random_augment,
                distillation=config.distillation,
                batch_size=opt.batch_size,
                eval_batch_size=opt.eval_batch_size,
                seed=runtime.seed,
            )
        yield DistillationInputs(
            splits=splits,
            train=logits.train,
            validation=logits.validation,
            steps_per_epoch=pipelines.steps_per_epoch(len(splits.train), opt.batch_size),
            teacher=teacher,
            logits=logits,
        )


def build_distiller(config, inputs, model_name, temperature, alpha, policy):
    """A fresh student `model_name` in a `Distiller` compiled under the dtype
    policy `policy` (see `kd_tf.precision`).

    Returns:
        The compiled `distillation.Distiller`; its `.student` is the model.
    """
    splits = inputs.splits
    online = inputs.logits.mode == "online"
    with precision.policy(policy):
        student = models.build_model(model_name, splits.image_shape, splits.num_classes)
        distiller = distillation.Distiller(
            student,
            temperature=temperature,
            alpha=alpha,
            teacher=inputs.teacher.adapter.logits if online else None,
        )
        # Built, so that its weights can be saved (keras-tuner checkpoints a trial's best epoch).
        distiller.build((None, *splits.image_shape))
        distiller.compile(
            optimizer=training.optimizer_for(config.optimization, inputs.steps_per_epoch),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            steps_per_execution=distribution.steps_per_execution(
                config.optimization.steps_per_execution
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
                distiller = build_distiller(
                    config, inputs, model_name, distill.temperature, distill.alpha, run.precision
                )
            epochs, best_epoch = run.fit(distiller, distiller.student, inputs)
            fields = inputs.report_fields()
        fields.update(temperature=distill.temperature, alpha=distill.alpha)
        return run.finish(distiller.student, inputs.splits, epochs, best_epoch, fields)
