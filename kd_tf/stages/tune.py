"""`tune`: keras-tuner search over the student's temperature and alpha, and,
if asked, its loss and the loss's settings.

The teacher's logits and the datasets are prepared once for all trials (see
`kd_tf.tuning`); the search report goes to `<tune_dir>/report.json`. Ctrl-C
keeps the search state in `tune_dir`: the same command resumes it.
"""

import dataclasses
import time

from kd_tf import config as config_lib
from kd_tf import cpu, distribution, interrupts, models, precision, tuning
from kd_tf.stages.report import data_summary
from kd_tf.stages.student import build_distiller, prepare_distillation


def run(config):
    """`--stage=tune`: returns the search report (also written to `tune_dir`)."""
    with interrupts.outcome(
        f"the search state is kept in {config.tune.tune_dir}: rerun the same command to resume it"
    ):
        return _search(config)


def _search(config):
    started = time.perf_counter()
    cpu_fields = cpu.for_run()
    model_name = config.model.model or models.DEFAULT_STUDENT
    tuning.check_tune_dir(config.tune.tune_dir)
    strategy = distribution.strategy_for(config.runtime, config.optimization.batch_size)
    policy = precision.resolve_for_run(config.runtime.precision)
    with prepare_distillation(config, strategy, policy) as inputs:

        def build(values):
            distill = trial_distillation(config, values)
            return build_distiller(config, inputs, model_name, policy, distill)

        trials = tuning.search(
            config.tune,
            build,
            inputs.train,
            inputs.validation,
            steps_per_epoch=inputs.steps_per_epoch,
            strategy=strategy,
            epochs=config.optimization.epochs,
            seed=config.runtime.seed,
        )
        teacher_fields = inputs.report_fields()
    report = {
        "stage": "tune",
        "flags": config_lib.fields(config),
        "data": data_summary(inputs.splits, config.data),
        "model": model_name,
        "tuner": config.tune.tuner,
        "objective": tuning.OBJECTIVE,
        "precision": policy,
        "cpu": cpu_fields,
        **teacher_fields,
        "stage_seconds": round(time.perf_counter() - started, 1),
    }
    return tuning.write_results(trials, config.tune.tune_dir, report)


def trial_distillation(config, values):
    """The run's `config.DistillationConfig` with a trial's `values` (see
    `tuning.DistillationHyperModel`): its temperature, alpha, loss and settings."""
    values = dict(values)
    if "distillation_loss" in values:
        values["distillation_loss"] = ((values["distillation_loss"], 1.0),)
    return dataclasses.replace(config.distillation, **values)
