"""Issue 12's small-data acceptance: scikit-learn's 8x8 handwritten digits.

"scikit-learn's 8x8 handwritten digits (real data shipped with scikit-learn),
written as a class-folder tree, go through teacher, student, scratch, compare
and predict. Use the default flags and models, or a one-line error that names
the model's minimum size and the flag to choose another."

It writes the 1,797 digits (values 0-16 scaled to 0-255, uint8, 8x8 grayscale
PNG) as `OUT/digits/<label>/NNNN.png`, with no `train/` or `test/` folders, so
the directory source holds out every 5th image of each class (file-name
order) as the test split. Then it runs `python -m kd_tf.main` as a user
would, each command with `--data_source=directory --data_dir=OUT/digits`:

1. `--flagfile=flags/teacher.cfg` as it is: refused, since its `lenet_bn`
   needs 16x16 images; the exit status and kd_tf's one stderr line are kept;
2. `--flagfile=flags/teacher.cfg --model=seed_cnn` (the teacher that the
   refusal names and that takes 8x8 grayscale digits: 6x6 at least);
3. `--flagfile=flags/student.cfg --teacher_dir=<that teacher>`;
4. `--flagfile=flags/scratch.cfg`;
5. `--flagfile=flags/compare.cfg --teacher_flagfile=OUT/teacher_seed_cnn.cfg`:
   compare applies its own flags to all three sub-runs, so `--model=seed_cnn`
   given to it would also replace the student's model; the teacher's model
   goes into a flag file of its own (`flags/teacher.cfg` plus `--model`);
6. `--stage=predict --model_dir=<the student>` on three held-out test images
   (the 5th file of classes 0, 1 and 2), keeping its stdout lines.

Exports go to `OUT/saved_models/<name>` (compare's sub-runs to
`OUT/compare_runs/<stage>/1`), kd_tf's output to `OUT/logs/<name>.log`. From
each export's `report.json` it takes the test accuracy (measured by kd_tf on
the reloaded export), `params`, the epochs, the best epoch, the training
seconds (the epochs' `train_seconds` summed), `stage_seconds` and `data`.
Everything, with the refusal line, the predict lines and the exact commands,
goes to `OUT/digits.json`; a Markdown table is printed.

Usage:

```
.venv/bin/python benchmarks/digits.py --out=/tmp/kd_tf_digits
```
"""

import argparse
import json
import os
import shlex
import time

import kd_tf_process
import numpy as np
from PIL import Image
from sklearn import datasets as sklearn_datasets

TEACHER_MODEL = "seed_cnn"
PREDICT_CLASSES = (0, 1, 2)
HELD_OUT_EVERY = 5  # the directory source's default --test_fraction=0.2
FLAG_FILES = {
    "teacher": "flags/teacher.cfg",
    "student": "flags/student.cfg",
    "scratch": "flags/scratch.cfg",
    "compare": "flags/compare.cfg",
}


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for the data, exports and results")
    args = parser.parse_args()
    args.out = os.path.abspath(args.out)
    for taken in ("digits", "saved_models", "compare_runs"):
        if os.path.exists(os.path.join(args.out, taken)):
            parser.error(f"{args.out}/{taken} exists: pass another --out, or remove it")
    return args


def write_digits(root):
    """Writes scikit-learn's digits as `root/<label>/NNNN.png` (8x8 uint8
    grayscale, values 0-16 scaled to 0-255).

    Returns:
        `{label: [paths in file-name order]}`.
    """
    digits = sklearn_datasets.load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    by_class = {}
    for index, (image, label) in enumerate(zip(images, digits.target)):
        path = os.path.join(root, str(label), f"{index:04d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(image).save(path)  # 2-D uint8: mode L
        by_class.setdefault(int(label), []).append(path)
    return by_class


def _data_flags(args):
    return ["--data_source=directory", f"--data_dir={os.path.join(args.out, 'digits')}"]


def _kd_tf(name, argv, args, **options):
    """Runs `python -m kd_tf.main ARGV` with the data flags, its TensorBoard
    logs under OUT; returns the `FinishedRun`."""
    argv = [*argv, *_data_flags(args), f"--log_dir={os.path.join(args.out, 'tensorboard', name)}"]
    return kd_tf_process.run(argv, os.path.join(args.out, "logs", f"{name}.log"), **options)


def _command(finished):
    return shlex.join(finished.command)


def _refusal(args):
    """The default teacher flag file on 8x8 images: exit status and kd_tf's lines."""
    export_dir = os.path.join(args.out, "saved_models", "teacher_lenet_bn")
    argv = [f"--flagfile={FLAG_FILES['teacher']}", f"--export_dir={export_dir}"]
    finished = _kd_tf("teacher_lenet_bn", argv, args, separate_stderr=True)
    kd_tf_lines = [line for line in finished.stderr.splitlines() if line.startswith("kd_tf:")]
    return {
        "command": _command(finished),
        "exit_status": finished.exit_status,
        "kd_tf_stderr_lines": kd_tf_lines,
        "line": kd_tf_lines[-1] if kd_tf_lines else None,
        "traceback": "Traceback" in finished.stderr,
        "export_written": os.path.exists(export_dir),
        "wall_seconds": finished.seconds,
    }


def _summary(stage, flags_shown, export_dir, finished=None):
    """One row of the results from an export's report."""
    report = kd_tf_process.read_report(export_dir)
    best = report["epochs"][report["best_epoch"] - 1]
    return {
        "stage": stage,
        "flags": flags_shown,
        "model": report["model"],
        "params": report["params"],
        "test_accuracy": report["test_accuracy"],
        "epochs": len(report["epochs"]),
        "best_epoch": report["best_epoch"],
        # On the training split as that epoch saw it: augmented, for teacher and student.
        "best_epoch_train_accuracy": best["accuracy"],
        "best_epoch_val_accuracy": best["val_accuracy"],
        "train_seconds": round(sum(epoch["train_seconds"] for epoch in report["epochs"]), 1),
        "stage_seconds": report["stage_seconds"],
        "wall_seconds": finished.seconds if finished else None,
        "data": report["data"],
        "export_dir": export_dir,
        "command": _command(finished) if finished else None,
    }


def _train(stage, extra, args):
    """Runs one training stage from its default flag file plus `extra`;
    returns its summary."""
    export_dir = os.path.join(args.out, "saved_models", stage)
    argv = [f"--flagfile={FLAG_FILES[stage]}", *extra, f"--export_dir={export_dir}"]
    finished = _kd_tf(stage, argv, args)
    if finished.exit_status != 0:
        raise SystemExit(f"{stage} failed with exit status {finished.exit_status}: see the log")
    shown = " ".join(
        "--teacher_dir=<teacher>" if flag.startswith("--teacher_dir=") else flag for flag in extra
    )
    return _summary(stage, f"`{FLAG_FILES[stage]}` {shown}".strip(), export_dir, finished)


def _compare(args):
    """`flags/compare.cfg` with a teacher flag file adding `--model=seed_cnn`;
    returns (its command and wall seconds, a summary per sub-run)."""
    teacher_flagfile = os.path.join(args.out, f"teacher_{TEACHER_MODEL}.cfg")
    with open(teacher_flagfile, "w") as f:
        f.write(
            "# flags/teacher.cfg with a teacher that takes 8x8 images\n"
            f"--flagfile={os.path.join(kd_tf_process.REPO, FLAG_FILES['teacher'])}\n"
            f"--model={TEACHER_MODEL}\n"
        )
    export_dir = os.path.join(args.out, "saved_models", "compare")
    argv = [
        f"--flagfile={FLAG_FILES['compare']}",
        f"--teacher_flagfile={teacher_flagfile}",
        f"--saved_models_dir={os.path.join(args.out, 'compare_runs')}",
        f"--export_dir={export_dir}",
    ]
    finished = _kd_tf("compare", argv, args)
    if finished.exit_status != 0:
        raise SystemExit(f"compare failed with exit status {finished.exit_status}: see the log")
    with open(os.path.join(export_dir, "report.json")) as f:
        runs = json.load(f)["runs"]
    flag_files = {**FLAG_FILES, "teacher": f"OUT/{os.path.basename(teacher_flagfile)}"}
    rows = [
        _summary(f"compare: {stage}", f"`{flag_files[stage]}`", path)
        for stage, path in sorted(runs.items(), key=lambda run: list(FLAG_FILES).index(run[0]))
    ]
    run = {
        "command": _command(finished),
        "wall_seconds": finished.seconds,
        "export_dir": export_dir,
    }
    return run, rows


def _predict(student_dir, images, args):
    """The predict stage on `images`: exit status and its stdout lines."""
    argv = ["--stage=predict", f"--model_dir={student_dir}", f"--images={','.join(images)}"]
    log_path = os.path.join(args.out, "logs", "predict.log")
    finished = kd_tf_process.run(argv, log_path, separate_stderr=True)
    return {
        "command": _command(finished),
        "exit_status": finished.exit_status,
        "images": images,
        "lines": finished.stdout.splitlines(),
        "wall_seconds": finished.seconds,
    }


def _table(rows):
    """A Markdown table, one row per training run."""
    header = (
        "| stage | flags | model | parameters | test accuracy | best epoch "
        "| its training / validation accuracy | train s | stage s |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['stage']} | {row['flags']} | `{row['model']}` | {row['params']:,} | "
            f"{100 * row['test_accuracy']:.2f} % | {row['best_epoch']}/{row['epochs']} | "
            f"{100 * row['best_epoch_train_accuracy']:.2f} % / "
            f"{100 * row['best_epoch_val_accuracy']:.2f} % | "
            f"{row['train_seconds']:.1f} | {row['stage_seconds']:.1f} |"
        )
    return "\n".join(lines)


def main():
    args = _arguments()
    started = time.perf_counter()
    by_class = write_digits(os.path.join(args.out, "digits"))
    refusal = _refusal(args)
    rows = [_train("teacher", [f"--model={TEACHER_MODEL}"], args)]
    rows.append(_train("student", [f"--teacher_dir={rows[0]['export_dir']}"], args))
    rows.append(_train("scratch", [], args))
    compare, compare_rows = _compare(args)
    rows.extend(compare_rows)
    held_out = [by_class[label][HELD_OUT_EVERY - 1] for label in PREDICT_CLASSES]
    predict = _predict(rows[1]["export_dir"], held_out, args)
    table = _table(rows)
    results = {
        "commit": kd_tf_process.checkout_commit(),
        "images_per_class": {label: len(paths) for label, paths in sorted(by_class.items())},
        "data": rows[0]["data"],
        "refusal": refusal,
        "runs": rows,
        "compare": compare,
        "predict": predict,
        "table": table,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    path = os.path.join(args.out, "digits.json")
    kd_tf_process.write_json(results, path)
    print(f"\nrefused: exit status {refusal['exit_status']}: {refusal['line']}")
    print(table)
    print("\n".join(["", "predict:", *predict["lines"]]))
    print(f"\nwall {results['wall_seconds']} s; results: {path}")


if __name__ == "__main__":
    main()
