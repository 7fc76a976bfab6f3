"""Issue 12's memory acceptance: a student stage on a large image-folder data set.

"A student stage on it, with cached logits and `--augment_views=4`, runs with
a peak resident memory below 1.5 GB. Measure it with /usr/bin/time -v."

On `--data_dir` (e.g. the 4.2 GB tree of `benchmarks/make_large_dataset.py`),
through kd_tf's command line only:

1. a quick teacher, unless `--teacher_dir` gives one: `--stage=teacher
   --data_source=directory --model=--teacher_model --epochs=1
   --train_examples=--teacher_train_examples` (plus `--teacher_flags`),
   exported to `OUT/saved_models/teacher`;
2. the measured run, under `/usr/bin/time -v`:
   `--stage=student --data_source=directory --teacher_dir=...
   --augment --augment_views=4 --teacher_logits=cached --epochs=1` (plus
   `--extra_flags`, last, so they win), exported to
   `OUT/saved_models/student`; GNU time's maximum resident set size and wall
   clock are parsed from its report.

`OUT/streaming_memory.json` gets the peak RSS (MiB, and whether it is below
1.5 GB = 1.5e9 bytes), the exact command, its exit status, the peak RSS of
`python -m kd_tf.main --help` (TensorFlow imported, no data: the floor of
every run), the data set's files and bytes on disk, the student's report
figures, and what the pre-streaming code (which decodes every image into
memory, then concatenates K augmented copies of the training split) would
hold, computed from the data set's real counts: its decoded images
`N_all*H*W*C` plus the K views `K*N_fit*H*W*C` (the "(1+K) x N x H x W x C"
of the issue) plus the cached float32 logits, and the two transient peaks
above that (decoding stacks a list of images: 2 copies; the views are
concatenated from a list). It is an arithmetic lower bound: the TensorFlow
runtime and `tf.data` copies come on top.

Part of the peak depends on no data set's size: the teacher's logit pass
runs batches of `--eval_batch_size` (1024 by default), and on 64x64 images
one activation of `lenet_bn`'s first convolution is then 512 MiB; a larger
teacher (`resnet_small`) holds more. `--extra_flags=--eval_batch_size=256`
shows the data's share.

`--measure_small_old=REPO` also measures, under `/usr/bin/time -v`, the
same student command from the checkout `REPO` (an old, in-memory kd_tf) and
from this one, on slices of the data set of `--slices` training files
(symlink trees under `OUT/slices/`, with a twelfth as many test files), to
show the old code's peak growing linearly with N and the new one's not
(leave `--train_examples` out of `--extra_flags` then: it would cap them).
The teacher pass's batch makes the peak jump by a few hundred MiB from one
run to the next, so slices need thousands of files to show a slope
(`--eval_batch_size=256` in `--extra_flags` lowers that noise): on a 300-
and a 900-file slice the peaks came out 1622 and 1488 MiB, no slope; on
4000 and 16000 files of 64x64x3 with K=4 (pre-streaming code), 1930 and
4137 MiB, 184 MiB per 1000 training files, about 15 copies of each image.

Usage:

```
.venv/bin/python benchmarks/make_large_dataset.py --out=/data/large --gigabytes=4.2
.venv/bin/python benchmarks/streaming_memory.py --data_dir=/data/large --out=/tmp/kd_tf_memory
# a try on a small set:
.venv/bin/python benchmarks/streaming_memory.py --data_dir=/tmp/tiny --out=/tmp/kd_tf_memory_try \\
    --extra_flags="--train_examples=512 --validation_examples=256"
```
"""

import argparse
import os
import shlex

import image_folders
import kd_tf_process
import numpy as np
from PIL import Image

VIEWS = 4
LIMIT_BYTES = 1.5e9
MIB = 2**20
# kd_tf's default validation split: 5000, or a twelfth of the training split if smaller.
DEFAULT_VALIDATION, VALIDATION_SHARE = 5000, 12
FLOAT32_BYTES = 4


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="class folders with train/ and test/")
    parser.add_argument("--out", required=True, help="directory for exports, logs and results")
    parser.add_argument("--teacher_dir", help="an existing teacher export (skips step 1)")
    parser.add_argument("--teacher_model", default="lenet_bn")
    parser.add_argument("--teacher_train_examples", type=int, default=4096)
    parser.add_argument("--teacher_flags", default="", help="more flags for the teacher run")
    parser.add_argument(
        "--extra_flags",
        default="",
        help="flags appended to the measured student command (pass them with =)",
    )
    parser.add_argument(
        "--measure_small_old",
        metavar="REPO",
        help="an old kd_tf checkout to measure on small slices",
    )
    parser.add_argument(
        "--slices",
        default="4000,16000",
        help="training files of each slice for --measure_small_old",
    )
    args = parser.parse_args()
    for name in ("data_dir", "out", "teacher_dir", "measure_small_old"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    if os.path.exists(os.path.join(args.out, "saved_models")):
        parser.error(f"{args.out}/saved_models exists: pass another --out, or remove it")
    return args


def _dataset_facts(data_dir):
    """Files, bytes, split counts, classes and image shape of the tree."""
    files, size = image_folders.tree_size(data_dir)
    train_root = os.path.join(data_dir, "train")
    classes = sorted(os.listdir(train_root))
    first_class = os.path.join(train_root, classes[0])
    first = os.path.join(first_class, min(os.listdir(first_class)))
    shape = np.array(Image.open(first)).shape
    return {
        "data_dir": data_dir,
        "files": files,
        "bytes_on_disk": size,
        "split_files": image_folders.split_counts(data_dir),
        "classes": len(classes),
        "image_shape": list(shape) if len(shape) == 3 else [*shape, 1],
    }


def _old_code_estimate(facts, views=VIEWS):
    """What the pre-streaming code holds for the whole data set (see the module doc)."""
    train, test = facts["split_files"]["train"], facts["split_files"]["test"]
    validation = max(1, min(DEFAULT_VALIDATION, train // VALIDATION_SHARE))
    fitted, every = train - validation, train + test
    image_bytes = int(np.prod(facts["image_shape"]))
    decoded = every * image_bytes
    view_bytes = views * fitted * image_bytes
    logits = (views * fitted + validation) * facts["classes"] * FLOAT32_BYTES
    held = decoded + view_bytes + logits
    return {
        "formula": "(N_all + K*N_fit) * H*W*C + (K*N_fit + N_val) * classes * 4",
        "N_all": every,
        "N_fit": fitted,
        "N_val": validation,
        "K": views,
        "bytes_per_image": image_bytes,
        "decoded_images_mib": round(decoded / MIB, 1),
        "augmented_views_mib": round(view_bytes / MIB, 1),
        "cached_logits_mib": round(logits / MIB, 1),
        "held_while_training_mib": round(held / MIB, 1),
        # decode_images stacks a list of decoded images: two copies at once.
        "decoding_peak_mib": round(2 * decoded / MIB, 1),
        # augmented_views: the decoded set, K-1 distorted copies in a list, and their concatenation.
        "views_peak_mib": round((decoded + (2 * views - 1) * fitted * image_bytes) / MIB, 1),
    }


def _teacher(args):
    """The teacher export: `--teacher_dir`, or one trained quickly now."""
    if args.teacher_dir:
        return args.teacher_dir
    export_dir = os.path.join(args.out, "saved_models", "teacher")
    argv = [
        "--stage=teacher",
        "--data_source=directory",
        f"--data_dir={args.data_dir}",
        f"--model={args.teacher_model}",
        "--epochs=1",
        f"--train_examples={args.teacher_train_examples}",
        f"--export_dir={export_dir}",
        f"--log_dir={os.path.join(args.out, 'tensorboard', 'teacher')}",
        *shlex.split(args.teacher_flags),
    ]
    finished = kd_tf_process.run(argv, os.path.join(args.out, "logs", "teacher.log"))
    if finished.exit_status != 0:
        raise SystemExit(
            f"the teacher run failed (exit status {finished.exit_status}): "
            f"see {args.out}/logs/teacher.log"
        )
    return export_dir


def _student_argv(data_dir, teacher_dir, out, name, extra_flags):
    """The measured student command's flags, exporting to `OUT/saved_models/<name>`."""
    return [
        "--stage=student",
        "--data_source=directory",
        f"--data_dir={data_dir}",
        f"--teacher_dir={teacher_dir}",
        "--augment",
        f"--augment_views={VIEWS}",
        "--teacher_logits=cached",
        "--epochs=1",
        f"--export_dir={os.path.join(out, 'saved_models', name)}",
        f"--log_dir={os.path.join(out, 'tensorboard', name)}",
        *shlex.split(extra_flags),
    ]


def _measured(argv, out, name, repo=kd_tf_process.REPO):
    """Runs the student `name` under `/usr/bin/time -v`; its figures and report."""
    log_path = os.path.join(out, "logs", f"{name}.log")
    finished = kd_tf_process.run(argv, log_path, repo=repo, measure_memory=True)
    result = {
        "command": " ".join(shlex.quote(part) for part in finished.command),
        "cwd": finished.cwd,
        "exit_status": finished.exit_status,
        "peak_rss_mib": finished.peak_rss_kib and round(finished.peak_rss_kib / 1024, 1),
        "elapsed_seconds": finished.elapsed_seconds,
        "log": log_path,
    }
    if finished.peak_rss_kib is not None:
        result["below_1.5_gb"] = finished.peak_rss_kib * 1024 < LIMIT_BYTES
    if finished.exit_status == 0:
        report = kd_tf_process.read_report(os.path.join(out, "saved_models", name))
        keys = (
            "data",
            "test_accuracy",
            "stage_seconds",
            "teacher_logits_seconds",
            "logits_cache",
            "logits_cache_megabytes",
        )
        result["report"] = {key: report.get(key) for key in keys}
        result["report"]["epoch_train_seconds"] = [e["train_seconds"] for e in report["epochs"]]
    return result


def _floor_rss_mib(out):
    """Peak RSS of kd_tf's command line that imports TensorFlow and exits
    (`--help`): the part of any run's peak that no data set causes."""
    finished = kd_tf_process.run(
        ["--help"], os.path.join(out, "logs", "help.log"), measure_memory=True
    )
    return finished.peak_rss_kib and round(finished.peak_rss_kib / 1024, 1)


def _slice_tree(data_dir, root, train_files):
    """A symlink tree of about `train_files` training files (the first of each
    class, in name order) and a twelfth as many test files."""
    for split, count in (("train", train_files), ("test", max(1, train_files // 11))):
        classes = sorted(os.listdir(os.path.join(data_dir, split)))
        per_class = -(-count // len(classes))
        for label in classes:
            os.makedirs(os.path.join(root, split, label))
            for name in sorted(os.listdir(os.path.join(data_dir, split, label)))[:per_class]:
                os.symlink(
                    os.path.join(data_dir, split, label, name),
                    os.path.join(root, split, label, name),
                )
    return root


def _slice_growth(args, teacher_dir):
    """Peak RSS of the old and this checkout on each slice."""
    rows = []
    for train_files in (int(n) for n in args.slices.split(",")):
        tree = _slice_tree(
            args.data_dir, os.path.join(args.out, "slices", str(train_files)), train_files
        )
        for checkout, repo in (("old", args.measure_small_old), ("current", kd_tf_process.REPO)):
            name = f"student_{checkout}_{train_files}"
            argv = _student_argv(tree, teacher_dir, args.out, name, args.extra_flags)
            run = _measured(argv, args.out, name, repo=repo)
            rows.append(
                {
                    "checkout": checkout,
                    "repo": repo,
                    "commit": kd_tf_process.checkout_commit(repo),
                    "slice_files": image_folders.split_counts(tree),
                    **run,
                }
            )
    return rows


def _growth(rows, train_files):
    """Per checkout, a straight line through its slices' peaks: MiB per 1000
    training files, and the peak it extrapolates to at `train_files`."""
    lines = {}
    for checkout in sorted({row["checkout"] for row in rows}):
        points = [
            (row["slice_files"]["train"], row["peak_rss_mib"])
            for row in rows
            if row["checkout"] == checkout and row["exit_status"] == 0
        ]
        if len({files for files, _ in points}) < 2:
            continue
        slope, intercept = np.polyfit(*zip(*points), 1)
        lines[checkout] = {
            "mib_per_1000_training_files": round(1000 * slope, 1),
            "extrapolated_peak_mib_for_the_data_set": round(intercept + slope * train_files, 1),
        }
    return lines


def main():
    args = _arguments()
    facts = _dataset_facts(args.data_dir)
    print(f"data set: {facts}", flush=True)
    teacher_dir = _teacher(args)
    argv = _student_argv(args.data_dir, teacher_dir, args.out, "student", args.extra_flags)
    student = _measured(argv, args.out, "student")
    results = {
        "commit": kd_tf_process.checkout_commit(),
        "data_set": facts,
        "teacher_dir": teacher_dir,
        "student": student,
        "floor_rss_mib": _floor_rss_mib(args.out),
        "old_code_estimate": _old_code_estimate(facts),
    }
    if args.measure_small_old:
        results["slices"] = _slice_growth(args, teacher_dir)
        results["slice_growth"] = _growth(results["slices"], facts["split_files"]["train"])
    path = os.path.join(args.out, "streaming_memory.json")
    kd_tf_process.write_json(results, path)
    _print_summary(results, path)


def _print_summary(results, path):
    facts, student, old = results["data_set"], results["student"], results["old_code_estimate"]
    print(
        f"\ndata set: {facts['files']} files, {facts['bytes_on_disk'] / 1e9:.3f} GB on disk, "
        f"{facts['split_files']}, images {facts['image_shape']}"
    )
    print(
        f"student (K={VIEWS}, cached logits): exit status {student['exit_status']}, "
        f"peak RSS {student['peak_rss_mib']} MiB (below 1.5 GB: {student.get('below_1.5_gb')}), "
        f"{student['elapsed_seconds']} s; `kd_tf.main --help` peaks at "
        f"{results['floor_rss_mib']} MiB"
    )
    print(
        f"pre-streaming code, arithmetic lower bound for this data set: "
        f"{old['held_while_training_mib']} MiB held while training "
        f"(decoded {old['decoded_images_mib']} + views {old['augmented_views_mib']} + "
        f"logits {old['cached_logits_mib']}), peaks {old['decoding_peak_mib']} MiB decoding, "
        f"{old['views_peak_mib']} MiB building the views"
    )
    for row in results.get("slices", []):
        print(
            f"slice {row['slice_files']}, {row['checkout']} checkout: "
            f"peak RSS {row['peak_rss_mib']} MiB, exit status {row['exit_status']}"
        )
    for checkout, line in results.get("slice_growth", {}).items():
        print(
            f"{checkout} checkout: {line['mib_per_1000_training_files']} MiB per 1000 training "
            f"files, extrapolated to this data set: "
            f"{line['extrapolated_peak_mib_for_the_data_set']} MiB"
        )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
