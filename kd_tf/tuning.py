"""`--stage=tune`: a keras-tuner search over the distillation temperature and
alpha, and, if asked, the loss and its own settings.

`DistillationHyperModel` turns a trial's `temperature` (log-uniform),
`alpha` (uniform), `distillation_loss` (a choice among `--tune_losses`) and
the settings of `--tune_ranges` (log-uniform from a minimum > 0, else
uniform; a DKD or DIST setting only in the trials of its loss) into a
compiled `Distiller`; `search` runs the tuner
(`--tuner`, `--max_trials`, `--executions_per_trial`) on datasets built once,
so the teacher's cached logits serve every trial. The objective is the best
epoch's `val_accuracy` on the validation split; the test split is never seen.

The search lives in `<tune_dir>/search` (keras-tuner's project, reloaded with
`overwrite=False`): rerunning the same command skips finished trials, and a
trial left RUNNING by an interrupted process is queued for retry by
keras-tuner's `Oracle.reload` and run again first. `write_results` then
writes `best.cfg` (a flag file for `--stage=student`), `report.json` and
`temperature.png` into `--tune_dir` and logs the trials as a table.

Usage:

```python
trials = tuning.search(config.tune, build_distiller, train, validation,
                       steps_per_epoch=430, strategy=strategy, epochs=10, seed=0)
# build_distiller({"temperature": 4.0, "alpha": 0.9, "distillation_loss": "dkd", ...})
report = tuning.write_results(trials, "tune", {"stage": "tune"})
# python -m kd_tf.main --flagfile=flags/student.cfg --flagfile=tune/best.cfg --teacher_dir=...
```
"""

import collections
import contextlib
import os

import keras
import keras_tuner as kt
from absl import logging

from kd_tf import choices, interrupts, reporting, training
from kd_tf.errors import ConfigError, UserError

TUNERS = choices.TUNERS
PROJECT_NAME = "search"
OBJECTIVE = "val_accuracy"
HYPERBAND_FACTOR = 3


class DistillationHyperModel(kt.HyperModel):
    """Builds the `Distiller` of one trial from its values (see the module doc).

    Every build seeds Keras with `seed + k`, where `k` counts the earlier
    builds with the same values, so the trials of a search start from the same
    student weights and the executions of one trial from different ones.

    Args:
        build_distiller: callable `{name: value} -> compiled Distiller`, with
            `temperature`, `alpha`, and the trial's `distillation_loss` and
            settings of `ranges` where searched.
        temperature_range: `(min, max)`, sampled log-uniformly.
        alpha_range: `(min, max)`, sampled uniformly.
        seed: base seed of the student's initial weights.
        losses: the losses a trial chooses from (none: no choice).
        ranges: `(setting, min, max)` of loss settings searched.

    Usage:

    ```python
    hypermodel = DistillationHyperModel(build, (1.0, 20.0), (0.1, 0.9), seed=0,
                                        losses=("kd", "dkd"), ranges=(("dkd_beta", 1, 16),))
    tuner = kt.RandomSearch(hypermodel, objective="val_accuracy", max_trials=4)
    ```
    """

    def __init__(self, build_distiller, temperature_range, alpha_range, seed, losses=(), ranges=()):
        super().__init__(name="distillation")
        self.build_distiller = build_distiller
        self.temperature_range = temperature_range
        self.alpha_range = alpha_range
        self.seed = seed
        self.losses = tuple(losses)
        self.ranges = tuple(ranges)
        self._builds = collections.Counter()

    def declare_hyperparameters(self, hp):
        hp.Float("temperature", *self.temperature_range, sampling="log")
        hp.Float("alpha", *self.alpha_range)
        if self.losses:
            hp.Choice("distillation_loss", list(self.losses))
        for name, low, high in self.ranges:
            owner = name.split("_")[0]
            conditional = self.losses and owner in choices.LOGIT_LOSSES
            with hp.conditional_scope("distillation_loss", [owner]) if conditional else _nothing():
                hp.Float(name, low, high, sampling="log" if low > 0 else "linear")

    def build(self, hp):
        self.declare_hyperparameters(hp)
        values = dict(hp.values)
        key = tuple(sorted(values.items()))
        keras.utils.set_random_seed(self.seed + self._builds[key])
        self._builds[key] += 1
        return self.build_distiller(values)

    def fit(self, hp, model, *args, **kwargs):
        logging.info("trial: %s", ", ".join(f"{k} {_shown(v)}" for k, v in hp.values.items()))
        training.build_optimizer(model)
        return model.fit(*args, **kwargs)


@contextlib.contextmanager
def _nothing():
    yield


def _shown(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def check_tune_dir(tune_dir):
    """Rejects a `tune_dir` that cannot hold a search, before any work."""
    if os.path.exists(tune_dir) and not os.path.isdir(tune_dir):
        raise ConfigError(
            ("tune_dir",), f"{{0}}={tune_dir} is a file: pass a directory (new or a search's)"
        )


def make_tuner(tune, hypermodel, strategy, *, epochs, seed):
    """The keras-tuner `Tuner` named by `tune.tuner`, in `<tune_dir>/search`.

    Args:
        tune: a `config.TuneConfig` (`tuner`, `max_trials`,
            `executions_per_trial`, `tune_dir`).
        hypermodel: a `DistillationHyperModel`.
        strategy: `tf.distribute.Strategy` for keras-tuner's
            `distribution_strategy`.
        epochs: epochs of a trial (hyperband's largest budget).
        seed: the tuner's seed.

    Returns:
        A `kt.Tuner`, reloaded from `tune_dir` when a search is there.

    Raises:
        ConfigError: when the search in `tune_dir` covers other ranges.
    """
    common = {
        "objective": kt.Objective(OBJECTIVE, direction="max"),
        "seed": seed,
        "executions_per_trial": tune.executions_per_trial,
        "directory": tune.tune_dir,
        "project_name": PROJECT_NAME,
        "overwrite": False,
        "distribution_strategy": strategy,
    }
    if tune.tuner == "bayesian":
        tuner = kt.BayesianOptimization(hypermodel, max_trials=tune.max_trials, **common)
    elif tune.tuner == "random":
        tuner = kt.RandomSearch(hypermodel, max_trials=tune.max_trials, **common)
    else:
        tuner = kt.Hyperband(hypermodel, max_epochs=epochs, factor=HYPERBAND_FACTOR, **common)
    declared = kt.HyperParameters()
    hypermodel.declare_hyperparameters(declared)
    searched = {hp.name: hp.get_config() for hp in tuner.oracle.get_space().space}
    wanted = {hp.name: hp.get_config() for hp in declared.space}
    if any(searched.get(name) != config for name, config in wanted.items()):
        raise ConfigError(
            ("tune_dir", "tune_dir"),
            f"{{0}}={tune.tune_dir} holds a search over other ranges "
            f"({searched}): pass the same ranges to resume it, or a new {{1}}",
        )
    return tuner


def search(tune, build_distiller, train, validation, *, steps_per_epoch, strategy, epochs, seed):
    """Runs (or resumes) the search and returns its trials, best first.

    Args:
        tune: a `config.TuneConfig` (see `make_tuner`, plus the search space
            `temperature_min/max`, `alpha_min/max`, `tune_losses`, `tune_ranges`).
        build_distiller: callable `{name: value} -> compiled Distiller` (see
            `DistillationHyperModel`).
        train: endless training `tf.data.Dataset`, shared by all trials.
        validation: finite validation `tf.data.Dataset` (the objective).
        steps_per_epoch: steps in one epoch.
        strategy: `tf.distribute.Strategy` the trials train under.
        epochs: epochs of a trial.
        seed: seed of the tuner and of the students' initial weights.

    Returns:
        The trials as `trial_rows` gives them.
    """
    hypermodel = DistillationHyperModel(
        build_distiller,
        (tune.temperature_min, tune.temperature_max),
        (tune.alpha_min, tune.alpha_max),
        seed,
        losses=tune.tune_losses,
        ranges=tune.tune_ranges,
    )
    tuner = make_tuner(tune, hypermodel, strategy, epochs=epochs, seed=seed)
    tuner.search(
        train,
        validation_data=validation,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        shuffle=False,
        callbacks=[interrupts.InterruptCheck(), training.EpochRecorder()],
        verbose=0,
    )
    return trial_rows(tuner.oracle)


def trial_rows(oracle):
    """One dict per trial of `oracle`: completed trials by descending
    objective, then the others.

    Returns:
        A list of `{"trial", "status", "temperature", "alpha", ...,
        "val_accuracy", "best_epoch"}`, with the trial's other searched values
        (`distillation_loss`, loss settings) in between (`val_accuracy` and
        `best_epoch` are None for a trial that did not complete).
    """
    rows = []
    for trial in oracle.trials.values():
        completed = trial.status == kt.engine.trial.TrialStatus.COMPLETED
        values = trial.hyperparameters.values
        rows.append(
            {
                "trial": trial.trial_id,
                "status": trial.status,
                **{k: float(v) if isinstance(v, (int, float)) else v for k, v in values.items()},
                "val_accuracy": trial.score if completed else None,
                "best_epoch": trial.best_step + 1 if completed else None,
            }
        )
    return sorted(rows, key=lambda r: (r["val_accuracy"] is None, -(r["val_accuracy"] or 0)))


def searched_values(row):
    """The searched values of a `trial_rows` row, `{flag name: value}`."""
    return {k: v for k, v in row.items() if k not in _ROW_FIELDS}


_ROW_FIELDS = ("trial", "status", "val_accuracy", "best_epoch")


def write_best_flagfile(best, path):
    """Writes the best trial's values (`--temperature`, `--alpha`, and
    `--distillation_loss` and loss settings where searched) as a flag file
    that `--stage=student --flagfile=PATH` takes as it is."""
    lines = [
        f"--{name}={value}" if isinstance(value, str) else f"--{name}={float(value)!r}"
        for name, value in searched_values(best).items()
    ]
    with open(path, "w") as f:
        f.write(
            f"# Best of the search in {os.path.dirname(path)}: trial {best['trial']}, "
            f"validation accuracy {100 * best['val_accuracy']:.2f} %.\n" + "\n".join(lines) + "\n"
        )


def write_results(trials, tune_dir, report):
    """Logs the trial table and writes `best.cfg`, `report.json` and
    `temperature.png` into `tune_dir`.

    Args:
        trials: `trial_rows` of the search.
        tune_dir: the search's directory.
        report: the stage's report; `trials`, `best` and `tune_dir` are added.

    Returns:
        The completed report.

    Raises:
        UserError: when no trial completed.
    """
    completed = [row for row in trials if row["val_accuracy"] is not None]
    if not completed:
        raise UserError(
            f"no trial of the search in {tune_dir} completed: see the log for the failures"
        )
    best = completed[0]
    report.update(trials=trials, best=best, tune_dir=tune_dir)
    write_best_flagfile(best, os.path.join(tune_dir, "best.cfg"))
    reporting.write_json(report, os.path.join(tune_dir, "report.json"))
    reporting.plot_search(completed, os.path.join(tune_dir, "temperature.png"))
    columns = ["trial", *{k: None for row in completed for k in searched_values(row)}]
    table = reporting.markdown_table(
        [
            {key: row.get(key) for key in (*columns, "val_accuracy", "best_epoch")}
            for row in completed
        ]
    )
    logging.info(
        "search in %s: %d trials completed of %d; best: %s (written to %s)\n%s",
        tune_dir,
        len(completed),
        len(trials),
        ", ".join(f"{k} {_shown(v)}" for k, v in searched_values(best).items()),
        os.path.join(tune_dir, "best.cfg"),
        table,
    )
    return report
