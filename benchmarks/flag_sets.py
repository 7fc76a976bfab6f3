"""Named sets of kd_tf flags run side by side over seeds, as a user runs them.

For each seed, every flag set runs once (`python -m kd_tf.main FLAGS --seed=S`, a
process of its own, through `kd_tf_process.run`), so that the sets alternate
(A B A B ...) and share whatever else the machine is doing. Each run's export,
logs and backups go under `out/<set>_seed<S>`; its `report.json` and wall
seconds are returned. The building block of the suites that compare recipes
(`teacher_recipe`) or methods over seeds.

Usage (from a suite of `benchmarks/run.py`):

```python
runs = flag_sets.run_alternating(
    {"old": ["--flagfile=flags/teacher.cfg"], "new": ["--flagfile=flags/teacher_fast.cfg"]},
    seeds=[0, 1, 2], out="/tmp/bench/teacher_recipe", extra=["--monitor_test"])
summary = flag_sets.accuracy_summary([run.report for run in runs["old"]])
```
"""

import dataclasses
import os
import statistics

from benchmarks import kd_tf_process


@dataclasses.dataclass
class Run:
    """One finished run of a flag set: its seed, report, wall seconds and export."""

    seed: int
    report: dict
    process_seconds: float
    export_dir: str


def run_alternating(flag_sets, *, seeds, out, extra=()):
    """Runs every flag set once per seed, the sets alternating within a seed.

    Args:
        flag_sets: name -> kd_tf arguments (a flag file and overrides).
        seeds: the `--seed` values.
        out: directory for every run's export, logs and backups.
        extra: arguments given to every run (after its own).

    Returns:
        name -> list of `Run`, in seed order.

    Raises:
        RuntimeError: a run failed (its log is named).
    """
    runs = {name: [] for name in flag_sets}
    for seed in seeds:
        for name, argv in flag_sets.items():
            where = os.path.join(out, f"{name}_seed{seed}")
            export_dir = os.path.join(where, "export")
            finished = kd_tf_process.run(
                [
                    *argv,
                    *extra,
                    f"--seed={seed}",
                    f"--export_dir={export_dir}",
                    f"--log_dir={where}/logs",
                    f"--backup_dir={where}/backup",
                    "--overwrite",
                ],
                log_path=os.path.join(where, "kd_tf.log"),
            )
            if finished.exit_status != 0:
                raise RuntimeError(f"{name}, seed {seed} failed: see {where}/kd_tf.log")
            report = kd_tf_process.read_report(export_dir)
            runs[name].append(Run(seed, report, finished.seconds, export_dir))
    return runs


def mean_and_sd(values):
    """`(mean, sample standard deviation)` of `values` (sd 0.0 for one value)."""
    values = list(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread


def accuracy_summary(reports):
    """Test accuracy (%) as mean and standard deviation over `reports`."""
    mean, spread = mean_and_sd(100 * report["test_accuracy"] for report in reports)
    return {
        "test_accuracy_mean": round(mean, 3),
        "test_accuracy_sd": round(spread, 3),
        "test_accuracies": [round(100 * r["test_accuracy"], 2) for r in reports],
    }
