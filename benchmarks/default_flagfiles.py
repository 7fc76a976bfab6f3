"""Full-length run of the default flag files on real MNIST, timed.

Runs, one after the other, as a user would:
1. `python -m kd_tf.main --flagfile=flags/compare.cfg` (teacher -> seed_mlp student -> scratch),
   timing the whole command;
2. `python -m kd_tf.main --flagfile=flags/student.cfg --model=compact_cnn` from that teacher;
3. `python -m kd_tf.main --flagfile=flags/scratch_augmented.cfg` (scratch on the student's
   augmented views: what augmentation alone gives).
Then prints a Markdown table of test accuracy (measured by kd_tf through each reloaded
SavedModel), parameters, best epoch and seconds, and writes it with the raw figures to
`<out>/results.json`.

Usage:

    python benchmarks/default_flagfiles.py --out=/tmp/kd_tf_bench
"""

import os
import subprocess
import sys
import time

from absl import app, flags

from kd_tf import reporting

_OUT = flags.DEFINE_string("out", "/tmp/kd_tf_bench", "Directory for exports, logs and results.")


def _run(argv):
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kd_tf.main", *argv], check=True)
    return time.perf_counter() - started


def _report(export_dir):
    return reporting.read_json(os.path.join(export_dir, "assets.extra", "report.json"))


def _points(report, baseline):
    return round(100 * (report["test_accuracy"] - baseline["test_accuracy"]), 2)


def main(argv):
    del argv
    out = _OUT.value
    common = [f"--saved_models_dir={out}/saved_models", f"--log_dir={out}/logs"]
    compare_seconds = _run(["--flagfile=flags/compare.cfg", *common])
    compare_dir = max(
        (
            os.path.join(out, "saved_models", "compare", n)
            for n in os.listdir(f"{out}/saved_models/compare")
        ),
        key=lambda path: int(os.path.basename(path)),
    )
    runs = reporting.read_json(os.path.join(compare_dir, "report.json"))["runs"]
    reports = {name: _report(runs[name]) for name in ("teacher", "student", "scratch")}
    compact_seconds = _run(
        [
            "--flagfile=flags/student.cfg",
            "--model=compact_cnn",
            f"--teacher_dir={runs['teacher']}",
            f"--export_dir={out}/saved_models/student_compact_cnn",
            *common,
        ]
    )
    reports["student (compact_cnn)"] = _report(f"{out}/saved_models/student_compact_cnn")
    _run(
        [
            "--flagfile=flags/scratch_augmented.cfg",
            f"--export_dir={out}/saved_models/scratch_augmented",
            *common,
        ]
    )
    reports["scratch (augmented views)"] = _report(f"{out}/saved_models/scratch_augmented")

    rows = []
    for name, report in reports.items():
        rows.append(
            {
                "run": name,
                "model": report["model"],
                "params": report["params"],
                "test_accuracy": report["test_accuracy"],
                "best_epoch": f"{report['best_epoch']}/{len(report['epochs'])}",
                "stage_seconds": report["stage_seconds"],
            }
        )
    table = reporting.markdown_table(rows)
    student = reports["student"]
    summary = {
        "compare_wall_seconds": round(compare_seconds, 1),
        "compact_cnn_wall_seconds": round(compact_seconds, 1),
        "student_minus_scratch_points": _points(student, reports["scratch"]),
        "student_minus_augmented_scratch_points": _points(
            student, reports["scratch (augmented views)"]
        ),
        "rows": rows,
    }
    reporting.write_json(summary, os.path.join(out, "results.json"))
    print(table)
    print(
        f"\nteacher + student + scratch (flags/compare.cfg): {compare_seconds:.0f} s wall; "
        f"student - scratch: {summary['student_minus_scratch_points']:+.2f} points; "
        f"student - augmented scratch: "
        f"{summary['student_minus_augmented_scratch_points']:+.2f} points; "
        f"compact_cnn student: {compact_seconds:.0f} s wall"
    )


if __name__ == "__main__":
    app.run(main)
