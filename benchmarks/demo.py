"""`make demo` and the results table: the default flag files on MNIST, per seed, timed per stage.

For every seed, as a user runs them (`kd_tf_process.run`):

1. `python -m kd_tf.main --flagfile=flags/compare.cfg --seed=S` (teacher -> seed_mlp student
   -> scratch: what `make demo` runs), its wall time and each stage's seconds (the
   student's teacher-logits pass apart);
2. `--flagfile=flags/student.cfg --model=compact_cnn` from that teacher;
3. `--flagfile=flags/scratch_augmented.cfg` (scratch on the student's augmented views: what
   augmentation alone gives).

Returns every run's test accuracy (through each reloaded export), parameters and seconds,
and per row the mean and standard deviation over seeds, with the demo's floors checked
(teacher >= 99.5 %, student >= 99.0 %, student - scratch >= +0.6 points).

Usage (from `benchmarks/run.py`): `python -m benchmarks.run demo --seeds=3`.
"""

import glob
import statistics

from benchmarks import flag_sets, kd_tf_process
from kd_tf import reporting

FLOORS = {"teacher": 99.5, "student": 99.0}
STUDENT_OVER_SCRATCH_FLOOR = 0.6
SMOKE_FLAGS = ["--train_examples=256", "--validation_examples=128", "--epochs=1"]


def _compare(seed, out, extra):
    """One `flags/compare.cfg` run; returns `(wall seconds, {stage: report})`."""
    where = f"{out}/compare_seed{seed}"
    finished = kd_tf_process.run(
        ["--flagfile=flags/compare.cfg", f"--seed={seed}",
         f"--saved_models_dir={where}/saved_models", f"--log_dir={where}/logs",
         f"--backup_dir={where}/backup", *extra],
        log_path=f"{where}/kd_tf.log",
    )
    if finished.exit_status != 0:
        raise RuntimeError(f"compare, seed {seed} failed: see {where}/kd_tf.log")
    (comparison,) = glob.glob(f"{where}/saved_models/compare/*/report.json")
    runs = reporting.read_json(comparison)["runs"]
    return finished.seconds, {name: kd_tf_process.read_report(runs[name]) for name in runs}


def _stage_row(name, report):
    row = {
        "run": name,
        "model": report["model"],
        "params": report["params"],
        "test_accuracy": report["test_accuracy"],
        "stage_seconds": report["stage_seconds"],
    }
    if "teacher_logits_seconds" in report:
        row["teacher_logits_seconds"] = report["teacher_logits_seconds"]
    return row


def _per_seed(seed, out, extra):
    seconds, reports = _compare(seed, out, extra)
    teacher_dir = reports["student"]["teacher_dir"]
    more = flag_sets.run_alternating(
        {
            "student_compact_cnn": [
                "--flagfile=flags/student.cfg", "--model=compact_cnn",
                f"--teacher_dir={teacher_dir}",
            ],
            "scratch_augmented": ["--flagfile=flags/scratch_augmented.cfg"],
        },
        seeds=[seed], out=out, extra=extra,
    )
    reports["student (compact_cnn)"] = more["student_compact_cnn"][0].report
    reports["scratch (augmented views)"] = more["scratch_augmented"][0].report
    return {
        "seed": seed,
        "demo_wall_seconds": seconds,
        "rows": [_stage_row(name, report) for name, report in reports.items()],
    }


def _means(seeds):
    """Per run name, mean and sd of test accuracy (%) and mean stage seconds."""
    by_run = {}
    for seed in seeds:
        for row in seed["rows"]:
            by_run.setdefault(row["run"], []).append(row)
    rows = []
    for name, runs in by_run.items():
        mean, spread = flag_sets.mean_and_sd(100 * r["test_accuracy"] for r in runs)
        rows.append({
            "run": name, "model": runs[0]["model"], "params": runs[0]["params"],
            "test accuracy %": f"{mean:.2f} ± {spread:.2f}",
            "test_accuracy_mean": round(mean, 3),
            "stage s": round(statistics.fmean(r["stage_seconds"] for r in runs), 1),
        })
    return rows


def suite(settings):
    """Runs the demo and the table's extra rows for every seed (see module doc)."""
    extra = SMOKE_FLAGS if settings.smoke else []
    seeds = [_per_seed(seed, f"{settings.out}/demo", extra) for seed in settings.seeds]
    rows = _means(seeds)
    mean = {row["run"]: row["test_accuracy_mean"] for row in rows}
    gain = round(mean["student"] - mean["scratch"], 2)
    return {
        "demo_wall_seconds_mean": round(statistics.fmean(s["demo_wall_seconds"] for s in seeds), 1),
        "student_minus_scratch_points": gain,
        "floors_met": {
            **{name: mean[name] >= floor for name, floor in FLOORS.items()},
            "student - scratch": gain >= STUDENT_OVER_SCRATCH_FLOOR,
        },
        "rows": [{k: v for k, v in row.items() if k != "test_accuracy_mean"} for row in rows],
        "seeds": seeds,
    }
