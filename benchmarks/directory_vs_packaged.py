"""Issue 12's acceptance on real MNIST: image folders against the packaged copy.

"The default flag files through `--data_source=directory` give the packaged
source's accuracies within 0.15 point, and a student epoch takes at most
1.3x the in-memory one."

For each source, `--data_source=packaged` and `--data_source=directory
--data_dir=FILES` (the tree `benchmarks/mnist_as_files.py` writes), it runs
`python -m kd_tf.main` as a user would, one run after the other:

1. `--flagfile=flags/teacher.cfg` for each source (skipped with
   `--student_only`);
2. then the two students back to back, `--flagfile=flags/student.cfg
   --teacher_dir=<that source's teacher>` (with `--student_only`, both from
   the one `--teacher_dir`, so that only the data source differs).

Exports go to `OUT/saved_models/<stage>_<source>`, kd_tf's output to
`OUT/logs/<stage>_<source>.log`. From each export's `report.json` it takes
the test accuracy (measured by kd_tf through the reloaded export) and the
per-epoch `train_seconds` (validation excluded), and reports per stage the
accuracy difference in points (directory - packaged) and the ratio of the
median epoch seconds, directory / packaged, over epochs 2 and later (the
first one traces). Acceptance: `|difference| <= 0.15` point for every stage
run, student epoch ratio `<= 1.3`. Printed as a table and written, with the
raw figures and commands, to `OUT/directory_vs_packaged.json`.

The tree's `validation/` folder holds the packaged copy's validation split,
so both sources train, select their epoch and test on the same images; the
directory source's training images come in another order (class folders,
then its fixed shuffle, `kd_tf/data/directory.py`), so the same `--seed`
draws other batches: the accuracy difference is that of two seeds.

`--epochs_scale=F` multiplies the flag files' `--epochs` (at least 2, so
that an epoch after the first is timed); `--extra_flags` are appended to
every kd_tf command, last, so they win (pass them with `=`).

Usage:

```
.venv/bin/python benchmarks/mnist_as_files.py --out=/tmp/mnist_files
.venv/bin/python benchmarks/directory_vs_packaged.py --files=/tmp/mnist_files \\
    --out=/tmp/kd_tf_directory
# both students from one teacher:
.venv/bin/python benchmarks/directory_vs_packaged.py --files=/tmp/mnist_files \\
    --out=/tmp/kd_tf_directory_students --student_only \\
    --teacher_dir=/tmp/kd_tf_directory/saved_models/teacher_packaged
# smoke test:
.venv/bin/python benchmarks/directory_vs_packaged.py --files=/tmp/mnist_files \\
    --out=/tmp/kd_tf_directory_smoke --extra_flags="--epochs=2 --train_examples=2048"
```
"""

import argparse
import os
import re
import shlex
import statistics

import kd_tf_process

SOURCES = ("packaged", "directory")
FLAG_FILES = {"teacher": "flags/teacher.cfg", "student": "flags/student.cfg"}
MAX_POINTS = 0.15
MAX_STUDENT_EPOCH_RATIO = 1.3


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", required=True, help="MNIST as class folders (mnist_as_files.py)")
    parser.add_argument("--out", required=True, help="directory for exports, logs and results")
    parser.add_argument(
        "--student_only",
        action="store_true",
        help="no teacher runs: both students from --teacher_dir",
    )
    parser.add_argument("--teacher_dir", help="the teacher export for --student_only")
    parser.add_argument(
        "--epochs_scale",
        type=float,
        default=1.0,
        help="multiply the flag files' --epochs (at least 2)",
    )
    parser.add_argument(
        "--extra_flags",
        default="",
        help='flags appended to every kd_tf command, e.g. --extra_flags="--epochs=2"',
    )
    args = parser.parse_args()
    if args.student_only != bool(args.teacher_dir):
        parser.error("--student_only and --teacher_dir go together")
    args.files, args.out = os.path.abspath(args.files), os.path.abspath(args.out)
    if args.teacher_dir:
        args.teacher_dir = os.path.abspath(args.teacher_dir)
    if os.path.exists(os.path.join(args.out, "saved_models")):
        parser.error(f"{args.out}/saved_models exists: pass another --out, or remove it")
    return args


def _source_flags(source, files):
    if source == "packaged":
        return ["--data_source=packaged"]
    return ["--data_source=directory", f"--data_dir={files}"]


def _scaled_epochs(stage, scale):
    """`["--epochs=N"]`: the stage's flag-file epochs times `scale`, or [] for 1."""
    if scale == 1.0:
        return []
    with open(os.path.join(kd_tf_process.REPO, FLAG_FILES[stage])) as f:
        epochs = int(re.search(r"^--epochs=(\d+)", f.read(), re.MULTILINE).group(1))
    return [f"--epochs={max(2, round(epochs * scale))}"]


def _run_stage(stage, source, args, teacher_dir=None):
    """Runs one stage on one source; returns `(export_dir, FinishedRun)`."""
    name = f"{stage}_{source}"
    export_dir = os.path.join(args.out, "saved_models", name)
    argv = [
        f"--flagfile={FLAG_FILES[stage]}",
        *_source_flags(source, args.files),
        *_scaled_epochs(stage, args.epochs_scale),
        *([f"--teacher_dir={teacher_dir}"] if teacher_dir else []),
        f"--export_dir={export_dir}",
        f"--log_dir={os.path.join(args.out, 'tensorboard', name)}",
        *shlex.split(args.extra_flags),
    ]
    log_path = os.path.join(args.out, "logs", f"{name}.log")
    finished = kd_tf_process.run(argv, log_path)
    if finished.exit_status != 0:
        raise SystemExit(f"{name} failed with exit status {finished.exit_status}: see {log_path}")
    return export_dir, finished


def _summary(export_dir, finished):
    """What the comparison needs from one run's report."""
    report = kd_tf_process.read_report(export_dir)
    seconds = [epoch["train_seconds"] for epoch in report["epochs"]]
    return {
        "export_dir": export_dir,
        "command": finished.command,
        "wall_seconds": finished.seconds,
        "test_accuracy": report["test_accuracy"],
        "best_epoch": report["best_epoch"],
        "epochs": len(seconds),
        "data": report["data"],
        "stage_seconds": report["stage_seconds"],
        "epoch_train_seconds": seconds,
        # Epochs 2 and later: the first one traces the step functions.
        "median_epoch_seconds": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
    }


def _comparison(runs):
    """Per stage: directory - packaged in points, and the epoch-time ratio."""
    comparison = {}
    for stage, by_source in runs.items():
        packaged, directory = by_source["packaged"], by_source["directory"]
        points = round(100 * (directory["test_accuracy"] - packaged["test_accuracy"]), 2)
        ratio = None
        if packaged["median_epoch_seconds"] and directory["median_epoch_seconds"]:
            ratio = round(directory["median_epoch_seconds"] / packaged["median_epoch_seconds"], 3)
        comparison[stage] = {
            "accuracy_points_directory_minus_packaged": points,
            "accuracy_within_0.15_point": abs(points) <= MAX_POINTS,
            "epoch_seconds_ratio_directory_over_packaged": ratio,
        }
    if comparison["student"]["epoch_seconds_ratio_directory_over_packaged"] is not None:
        ratio = comparison["student"]["epoch_seconds_ratio_directory_over_packaged"]
        comparison["student"]["epoch_ratio_at_most_1.3"] = ratio <= MAX_STUDENT_EPOCH_RATIO
    return comparison


def _table(runs, comparison):
    """A Markdown table: one row per stage and source, then the verdicts."""
    lines = [
        "| stage | source | test accuracy | epochs | median epoch s (2nd on) |",
        "|---|---|---|---|---|",
    ]
    for stage, by_source in runs.items():
        for source, run in by_source.items():
            median = run["median_epoch_seconds"]
            lines.append(
                f"| {stage} | {source} | {100 * run['test_accuracy']:.2f} % | "
                f"{run['epochs']} | {'-' if median is None else f'{median:.3f}'} |"
            )
    for stage, verdict in comparison.items():
        lines.append(
            f"\n{stage}: directory - packaged = "
            f"{verdict['accuracy_points_directory_minus_packaged']:+.2f} points "
            f"(within {MAX_POINTS}: {verdict['accuracy_within_0.15_point']}); "
            f"epoch seconds directory / packaged = "
            f"{verdict['epoch_seconds_ratio_directory_over_packaged']}"
        )
    student = comparison["student"]
    if "epoch_ratio_at_most_1.3" in student:
        lines.append(
            f"student epoch ratio <= {MAX_STUDENT_EPOCH_RATIO}: "
            f"{student['epoch_ratio_at_most_1.3']}"
        )
    else:
        lines.append("student epoch ratio: not measured (a run had only one epoch)")
    return "\n".join(lines)


def main():
    args = _arguments()
    runs = {}
    if not args.student_only:
        runs["teacher"] = {s: _summary(*_run_stage("teacher", s, args)) for s in SOURCES}
    # The two students back to back, so that the machine is in the same state for both.
    runs["student"] = {
        s: _summary(
            *_run_stage(
                "student",
                s,
                args,
                teacher_dir=args.teacher_dir or runs["teacher"][s]["export_dir"],
            )
        )
        for s in SOURCES
    }
    comparison = _comparison(runs)
    table = _table(runs, comparison)
    results = {
        "commit": kd_tf_process.checkout_commit(),
        "files": args.files,
        "epochs_scale": args.epochs_scale,
        "extra_flags": args.extra_flags,
        "runs": runs,
        "comparison": comparison,
        "table": table,
    }
    path = os.path.join(args.out, "directory_vs_packaged.json")
    kd_tf_process.write_json(results, path)
    print(table)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
