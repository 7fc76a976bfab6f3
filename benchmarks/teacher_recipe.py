"""The teacher recipe's time to accuracy: today's default against candidates, side by side.

Each recipe is a flag file (`RECIPES`) run by `flag_sets.run_alternating` for every seed,
the recipes alternating, with `--monitor_test` so that every epoch records the test
accuracy of the weights it ended with. For each run:

- time to `TARGET` test accuracy: the training and validation seconds of the epochs up to
  the first one whose test accuracy reaches it (None if none does);
- the final test accuracy (of the exported best epoch, through the reloaded export) and the
  stage's seconds;
- the test accuracy of the student `flags/student.cfg` distils from that teacher (same seed;
  the recipes alternating again), since a faster teacher is only worth having if its
  students hold up.

Per recipe, the mean and standard deviation over seeds, and for the candidate the ratios of
its mean time to target and stage seconds to the default's (< 0.4: the candidate may
become the default, if its mean accuracy is >= 99.5 %).

Usage (from `benchmarks/run.py`): `python -m benchmarks.run teacher_recipe --seeds=3`, or
`... --seeds=3 -- lenet_bn_18` for the default and the recipes named after `--` only.
"""

import statistics

from benchmarks import flag_sets

TARGET = 0.995
DEFAULT = "lenet_bn"
_NARROW_AT_256 = [
    "--flagfile=flags/teacher_fast.cfg",
    "--batch_size=256",
    "--learning_rate=4e-3",
]
# Recipe name -> kd_tf arguments. The first is the default the others are compared with.
RECIPES = {
    DEFAULT: ["--flagfile=flags/teacher.cfg"],
    "lenet_narrow_10": ["--flagfile=flags/teacher_fast.cfg"],
    # flags/teacher_fast.cfg until 2026-12-08 (batch 256, Adam 4e-3), at 12 and 15 epochs.
    "lenet_narrow_12": [*_NARROW_AT_256, "--epochs=12"],
    "lenet_narrow_15": [*_NARROW_AT_256, "--epochs=15"],
    # The default recipe until 2026-12-07.
    "lenet_bn_18": ["--flagfile=flags/teacher.cfg", "--epochs=18"],
}
SMOKE_FLAGS = ["--train_examples=256", "--validation_examples=128", "--epochs=1"]
# What each recipe's teachers are judged by besides their own accuracy: the student they give.
STUDENT = ["--flagfile=flags/student.cfg"]


def seconds_to_target(epochs, target=TARGET):
    """Training plus validation seconds up to the first epoch whose
    `test_accuracy` reaches `target`, or None."""
    spent = 0.0
    for epoch in epochs:
        spent += epoch["train_seconds"] + epoch["validation_seconds"]
        if epoch["test_accuracy"] >= target:
            return round(spent, 1)
    return None


def _recipe_summary(runs):
    reached = [seconds_to_target(run.report["epochs"]) for run in runs]
    stage = [run.report["stage_seconds"] for run in runs]
    return {
        **flag_sets.accuracy_summary([run.report for run in runs]),
        "seconds_to_target": reached,
        "seconds_to_target_mean": (
            round(statistics.fmean(reached), 1) if None not in reached else None
        ),
        "stage_seconds_mean": round(statistics.fmean(stage), 1),
        "epoch_seconds_median": round(
            statistics.median(e["train_seconds"] for run in runs for e in run.report["epochs"]), 2
        ),
        "epochs": runs[0].report["flags"]["epochs"],
        "model": runs[0].report["model"],
        "precision": runs[0].report["precision"],
    }


def distil_students(runs, *, out, extra=()):
    """Distils `STUDENT` from every recipe's teacher of every seed, the recipes
    alternating within a seed, each student with its teacher's seed.

    Args:
        runs: recipe name -> the recipe's teacher runs (`flag_sets.Run`), every
            recipe's in the same seed order (as `flag_sets.run_alternating` returns them).
        out: directory for the students' exports and logs.
        extra: arguments given to every student run.

    Returns:
        recipe name -> the student runs, in seed order.
    """
    students = {name: [] for name in runs}
    for teachers in zip(*runs.values()):
        argv = {
            name: [*STUDENT, f"--teacher_dir={teacher.export_dir}"]
            for name, teacher in zip(runs, teachers)
        }
        seed = teachers[0].seed
        finished = flag_sets.run_alternating(argv, seeds=[seed], out=out, extra=extra)
        for name, student_runs in finished.items():
            students[name].extend(student_runs)
    return students


def _ratio(value, reference):
    return round(value / reference, 3) if value is not None and reference else None


def selected(names):
    """The recipes of `names` (every one of `RECIPES` when empty), the default
    always first; an unknown name ends the run with one line."""
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        raise SystemExit(f"teacher_recipe: unknown recipes {unknown}; known: {sorted(RECIPES)}")
    wanted = {DEFAULT, *(names or RECIPES)}
    return {name: flags for name, flags in RECIPES.items() if name in wanted}


def suite(settings):
    """Runs the recipes named after `--` (all by default) over `settings.seeds`;
    returns the figures (see module doc)."""
    extra = ["--monitor_test", *(SMOKE_FLAGS if settings.smoke else [])]
    runs = flag_sets.run_alternating(
        selected(settings.script_args),
        seeds=settings.seeds,
        out=f"{settings.out}/teacher_recipe",
        extra=extra,
    )
    students = distil_students(
        runs,
        out=f"{settings.out}/teacher_recipe_students",
        extra=SMOKE_FLAGS if settings.smoke else (),
    )
    recipes = {name: _recipe_summary(recipe_runs) for name, recipe_runs in runs.items()}
    for name, student_runs in students.items():
        recipes[name]["student"] = flag_sets.accuracy_summary([r.report for r in student_runs])
    default = recipes[DEFAULT]
    for summary in recipes.values():
        summary["time_to_target_vs_default"] = _ratio(
            summary["seconds_to_target_mean"], default["seconds_to_target_mean"]
        )
        summary["stage_seconds_vs_default"] = _ratio(
            summary["stage_seconds_mean"], default["stage_seconds_mean"]
        )
    return {
        "target_test_accuracy": TARGET,
        "recipes": {name: {"flags": RECIPES[name], **s} for name, s in recipes.items()},
        "rows": [{"recipe": name, **_row(s)} for name, s in recipes.items()],
    }


def _row(summary):
    return {
        "test accuracy %": _mean_and_sd(summary),
        "student test accuracy %": _mean_and_sd(summary["student"]),
        f"s to {100 * TARGET:.1f} %": summary["seconds_to_target_mean"],
        "vs default": summary["time_to_target_vs_default"],
        "stage s": summary["stage_seconds_mean"],
        "epoch s": summary["epoch_seconds_median"],
    }


def _mean_and_sd(summary):
    return f"{summary['test_accuracy_mean']:.2f} ± {summary['test_accuracy_sd']:.2f}"
