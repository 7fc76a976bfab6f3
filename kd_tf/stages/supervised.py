"""`teacher` and `scratch`: cross-entropy training on the hard labels.

`teacher` trains the teacher (default `models.DEFAULT_TEACHER`); `scratch`
trains the student's architecture (default `models.DEFAULT_STUDENT`) without
a teacher, the baseline a distilled student is compared with.
"""

import keras

from kd_tf import determinism, distribution, models, pipelines, precision
from kd_tf.stages.training_run import TrainingInputs, TrainingRun, load_data


def _inputs(config):
    """The training stream (fixed views appended, or distortions drawn afresh)
    and the validation stream."""
    splits = load_data(config.data)
    views, random_augment = pipelines.augmentation(config.data.augment, config.data.augment_views)
    opt = config.optimization
    return TrainingInputs(
        splits=splits,
        train=pipelines.training_dataset(
            splits.train, opt.batch_size, seed=config.runtime.seed, views=views,
            augment=random_augment,
        ),
        validation=pipelines.evaluation_dataset(splits.validation, opt.eval_batch_size),
        steps_per_epoch=pipelines.steps_per_epoch(len(splits.train), opt.batch_size),
    )


def train_supervised(config, stage, default_model):
    """Trains `config.model.model` (or `default_model`) on the hard labels and
    exports it; returns the report."""
    model_name = config.model.model or default_model
    with TrainingRun(config, stage, model_name) as run, run.not_exported():
        determinism.make_reproducible(
            config.runtime.seed, deterministic=config.runtime.deterministic
        )
        inputs = _inputs(config)
        with run.strategy.scope(), precision.policy(run.precision):
            model = models.build_model(
                model_name, inputs.splits.image_shape, inputs.splits.num_classes
            )
            model.compile(
                optimizer=run.optimizer(inputs.steps_per_epoch),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                steps_per_execution=distribution.steps_per_execution(
                    config.optimization.steps_per_execution, inputs.steps_per_epoch
                ),
            )
        epochs, best_epoch = run.fit(model, model, inputs)
        return run.finish(model, inputs.splits, epochs, best_epoch)


def teacher(config):
    """`--stage=teacher`."""
    return train_supervised(config, "teacher", models.DEFAULT_TEACHER)


def scratch(config):
    """`--stage=scratch`."""
    return train_supervised(config, "scratch", models.DEFAULT_STUDENT)
