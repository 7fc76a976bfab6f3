"""Does the directory source add anything but an order? The packaged MNIST in the folders' order.

`benchmarks/directory_vs_packaged.py` trains one student from
`--data_source=packaged` and one from `--data_source=directory` on the tree
`benchmarks/mnist_as_files.py` writes: the same images, labels and splits,
read in two orders (the packaged copy's, and the folders': class folders,
then the directory source's fixed shuffle). This script runs kd_tf in
process with `--data_source=packaged`, its images put in the order the
directory source reads the tree (file names are the packaged indices), and
compares every variable of its export with the directory student's
(`--compare_with`). Equal variables mean that the two sources differ by the
order of their images alone, which acts as another `--seed` would.

Writes `OUT/packaged_in_folder_order.json`: the test accuracy, best epoch
and whether every exported variable equals the other export's.

Usage (kd_tf's flags after `--`):

```
.venv/bin/python benchmarks/packaged_in_folder_order.py --files=/tmp/mnist_files \\
    --out=/tmp/kd_tf_order \\
    --compare_with=/tmp/kd_tf_dvp_same/saved_models/student_directory -- \\
    --flagfile=flags/student.cfg --teacher_dir=/tmp/kd_tf_dvp/saved_models/teacher_packaged
```
"""

import argparse
import json
import os

import kd_tf_process
import numpy as np
import tensorflow as tf

from kd_tf import data
from kd_tf import main as kd_tf_main
from kd_tf.data import directory, packaged
from kd_tf.data.splits import Split


def folder_order(files):
    """`(train, test)`: the packaged indices (the file names) of the tree's
    training and validation images, then of its test images, in the order
    the directory source reads them (`directory.listed_files`)."""
    listed = directory.listed_files(files)

    def indices(part):
        return [int(os.path.splitext(os.path.basename(path))[0]) for path, _ in part]

    return indices(listed.train) + indices(listed.validation), indices(listed.test)


def packaged_in_folder_order(files):
    """`read_packaged_mnist`'s splits with their images in the folders' order."""
    train, test = data.read_packaged_mnist()
    train_order, test_order = folder_order(files)
    return (
        Split(train.images[train_order], train.labels[train_order]),
        Split(test.images[test_order], test.labels[test_order]),
    )


def same_variables(first, second):
    """Whether two exports hold equal variables, in order."""
    ours, theirs = (tf.saved_model.load(path).variables for path in (first, second))
    return len(ours) == len(theirs) and all(
        np.array_equal(a.numpy(), b.numpy()) for a, b in zip(ours, theirs)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", required=True, help="the tree of mnist_as_files.py")
    parser.add_argument("--out", required=True, help="directory for the export and results")
    parser.add_argument("--compare_with", required=True, help="the directory student's export")
    parser.add_argument("kd_tf_flags", nargs="+", help="kd_tf's flags (after --)")
    args = parser.parse_args()
    reordered = packaged_in_folder_order(os.path.abspath(args.files))
    # The packaged source reads through kd_tf.data.packaged (kd_tf.data.sources).
    packaged.read_packaged_mnist = lambda: reordered
    export_dir = os.path.join(os.path.abspath(args.out), "student_packaged_in_folder_order")
    status = kd_tf_main.run_command(
        [*args.kd_tf_flags, "--data_source=packaged", f"--export_dir={export_dir}"]
    )
    if status != 0:
        raise SystemExit(f"kd_tf failed with exit status {status}")
    report = kd_tf_process.read_report(export_dir)
    result = {
        "commit": kd_tf_process.checkout_commit(),
        "kd_tf_flags": args.kd_tf_flags,
        "export_dir": export_dir,
        "test_accuracy": report["test_accuracy"],
        "best_epoch": report["best_epoch"],
        "compared_with": args.compare_with,
        "every_variable_equal": same_variables(export_dir, args.compare_with),
    }
    kd_tf_process.write_json(result, os.path.join(args.out, "packaged_in_folder_order.json"))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
