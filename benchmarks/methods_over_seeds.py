"""Distillation methods as means over seeds: scratch, KD, DKD, DIST and KD with
a hint, on MNIST and on scikit-learn's 8x8 digits.

Through kd_tf's command line only (`kd_tf_process`), for each data set of
`--datasets`:

1. one teacher (seed 0), shared by every student: MNIST `flags/teacher.cfg`;
   digits (`digits.write_digits`, a class-folder tree) the same with
   `--model=seed_cnn` (`lenet_bn` needs 16x16 images);
2. for each student model (MNIST: `seed_mlp` and `compact_cnn`; digits:
   `seed_mlp`) and each seed of `--seeds` (the student's initialisation and
   data order): `scratch` (`flags/scratch.cfg`), `kd` (`flags/student.cfg`),
   `dkd` and `dist` (the same with `--distillation_loss` and `--alpha=0.5`,
   the papers' equal weighting), on digits `dist_alpha_0.9` (DIST at the flag
   file's `--alpha=0.9`), for `compact_cnn`, `kd_hint` (KD plus
   `--hint_layers=penultimate`) and `dist_ensemble` (`dist` from two
   teachers), and for `seed_mlp`, `kd_ensemble` (KD from the mean softened
   distribution of two teachers: the teacher of step 1 and the same teacher
   flags with `--seed=1`, trained when first needed).

A run whose export is already in `<out>/saved_models/<name>` is not run again: its report is
read (a teacher trained elsewhere can be put there as `mnist_teacher`). Each run's test accuracy
is kd_tf's, measured on its reloaded export. The
table gives, per data set, model and method, the mean ± sample standard
deviation over the seeds, and the gap to the teacher.

Usage:

    python benchmarks/methods_over_seeds.py --out=/tmp/kd_tf_methods --seeds=0,1,2
    # a smoke run: --datasets=digits --seeds=0 --epochs=1 --train_examples=512
    # one student model: --datasets=mnist --models=seed_mlp
    # some methods: --methods=kd,kd_ensemble
    # teachers trained longer than their flag file says: --teacher_epochs=100

Writes `<out>/methods_over_seeds.json` and prints the Markdown table.
"""

import os
import statistics

import digits
import kd_tf_process
from absl import app, flags

_OUT = flags.DEFINE_string("out", "/tmp/kd_tf_methods", "Directory for exports, logs and results.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Student seeds.")
_DATASETS = flags.DEFINE_list("datasets", ["mnist", "digits"], "mnist and/or digits.")
_MODELS = flags.DEFINE_list("models", None, "Only these student models (default: each plan's).")
_METHODS = flags.DEFINE_list("methods", None, "Only these methods (default: each model's).")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Override every run's epochs (smoke runs).")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", None, "Cap (smoke runs only).")
_TEACHER_EPOCHS = flags.DEFINE_integer(
    "teacher_epochs", None, "The teachers' epochs instead of their flag file's (a fresh --out)."
)

METHODS = {
    "scratch": ("--flagfile=flags/scratch.cfg",),
    "kd": ("--flagfile=flags/student.cfg",),
    "dkd": ("--flagfile=flags/student.cfg", "--distillation_loss=dkd", "--alpha=0.5"),
    "dist": ("--flagfile=flags/student.cfg", "--distillation_loss=dist", "--alpha=0.5"),
    "dist_alpha_0.9": ("--flagfile=flags/student.cfg", "--distillation_loss=dist"),
    "kd_hint": ("--flagfile=flags/student.cfg", "--hint_layers=penultimate"),
    "kd_ensemble": ("--flagfile=flags/student.cfg",),
    "dist_ensemble": ("--flagfile=flags/student.cfg", "--distillation_loss=dist", "--alpha=0.5"),
}
# The methods that distil from both teachers of the data set.
ENSEMBLE_METHODS = ("kd_ensemble", "dist_ensemble")
# data set -> (teacher flags, student models, the methods each model runs).
PLANS = {
    "mnist": (
        ("--flagfile=flags/teacher.cfg",),
        {
            "seed_mlp": ("scratch", "kd", "dkd", "dist", "kd_ensemble"),
            "compact_cnn": ("scratch", "kd", "dkd", "dist", "kd_hint", "dist_ensemble"),
        },
    ),
    "digits": (
        ("--flagfile=flags/teacher.cfg", "--model=seed_cnn"),
        {"seed_mlp": ("scratch", "kd", "dkd", "dist", "dist_alpha_0.9", "kd_ensemble")},
    ),
}


def _data_flags(dataset, out):
    if dataset == "mnist":
        return []
    tree = os.path.join(out, "digits")
    if not os.path.isdir(tree):
        digits.write_digits(tree)
    return ["--data_source=directory", f"--data_dir={tree}"]


def _run(out, name, argv):
    """Runs kd_tf once (or reuses its export); returns `(export_dir, report)`."""
    export_dir = os.path.join(out, "saved_models", name)
    if not os.path.isdir(export_dir):
        extra = [f"--epochs={_EPOCHS.value}"] if _EPOCHS.value else []
        if _TRAIN_EXAMPLES.value:
            extra.append(f"--train_examples={_TRAIN_EXAMPLES.value}")
        finished = kd_tf_process.run(
            [*argv, *extra, f"--export_dir={export_dir}", f"--log_dir={out}/logs"],
            os.path.join(out, "logs", f"{name}.log"),
        )
        if finished.exit_status:
            raise SystemExit(f"failed ({finished.exit_status}): {' '.join(finished.command)}")
    return export_dir, kd_tf_process.read_report(export_dir)


def _dataset_rows(dataset, out, teachers):
    """The rows of `dataset`'s students; sets `teachers[name]` to each
    teacher's test accuracy (and the ensemble's, when a student had two)."""
    teacher_flags, students = PLANS[dataset]
    if _TEACHER_EPOCHS.value:
        teacher_flags = (*teacher_flags, f"--epochs={_TEACHER_EPOCHS.value}")
    data_flags = _data_flags(dataset, out)
    teacher_dir, teacher = _run(out, f"{dataset}_teacher", [*teacher_flags, *data_flags, "--seed=0"])
    teachers[dataset] = teacher["test_accuracy"]
    rows = []
    for model, methods in students.items():
        if _MODELS.value and model not in _MODELS.value:
            continue
        for method in methods:
            if _METHODS.value and method not in _METHODS.value:
                continue
            teacher_dirs = teacher_dir
            if method in ENSEMBLE_METHODS:
                second_dir, second = _run(
                    out, f"{dataset}_teacher_seed1", [*teacher_flags, *data_flags, "--seed=1"]
                )
                teachers[f"{dataset}_seed1"] = second["test_accuracy"]
                teacher_dirs = f"{teacher_dir},{second_dir}"
            for seed in _SEEDS.value:
                argv = [*METHODS[method], *data_flags, f"--model={model}", f"--seed={seed}"]
                if method != "scratch":
                    argv.append(f"--teacher_dir={teacher_dirs}")
                _, report = _run(out, f"{dataset}_{model}_{method}_{seed}", argv)
                if "ensemble_test_accuracy" in report:
                    teachers[f"{dataset}_ensemble"] = report["ensemble_test_accuracy"]
                rows.append(
                    {"dataset": dataset, "model": model, "method": method, "seed": int(seed),
                     "test_accuracy": report["test_accuracy"]}
                )
    return rows


def summary(teachers, rows):
    """Mean ± sd of each (data set, model, method), and its gap to the teacher."""
    groups = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["model"], row["method"]), []).append(
            100 * row["test_accuracy"]
        )
    return [
        {
            "dataset": dataset, "model": model, "method": method, "seeds": len(values),
            "mean": round(statistics.mean(values), 2),
            "sd": round(statistics.stdev(values), 2) if len(values) > 1 else None,
            "gap_to_teacher": round(100 * teachers[dataset] - statistics.mean(values), 2),
        }
        for (dataset, model, method), values in groups.items()
    ]


def _table(rows, cpu):
    lines = [
        f"Test accuracy (%), mean ± sd over seeds; {cpu}.",
        "",
        "| data set | student | method | seeds | accuracy | gap to teacher |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        spread = "" if row["sd"] is None else f" ± {row['sd']:.2f}"
        lines.append(
            f"| {row['dataset']} | {row['model']} | {row['method']} | {row['seeds']} | "
            f"{row['mean']:.2f}{spread} | {row['gap_to_teacher']:.2f} |"
        )
    return "\n".join(lines)


def main(_):
    out = os.path.abspath(_OUT.value)
    os.makedirs(out, exist_ok=True)
    teachers, rows = {}, []
    for dataset in _DATASETS.value:
        rows += _dataset_rows(dataset, out, teachers)
    cpu = kd_tf_process.cpu_name()
    results = {
        "commit": kd_tf_process.checkout_commit(),
        "cpu": cpu,
        "teachers": teachers,
        "runs": rows,
        "summary": summary(teachers, rows),
    }
    kd_tf_process.write_json(results, os.path.join(out, "methods_over_seeds.json"))
    print(_table(results["summary"], cpu))


if __name__ == "__main__":
    app.run(main)
