"""A small data set with the default flags: scikit-learn's 1,797 real 8x8 digits
as a class-folder tree (1,442 training images) go through compare (teacher,
student, scratch) and predict through `kd_tf.main.run_command`, with the default
validation split (a twelfth of the training split) and the default models, or
the one-line refusal of a model that needs larger images."""

import contextlib
import io
import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from sklearn import datasets as sklearn_datasets

from kd_tf import main, reporting


def _digits_tree(root):
    """The digits (values 0-16, scaled to 0-255) as 8x8 grayscale PNGs,
    `root/<digit>/NNNN.png`; returns the paths of the first three."""
    digits = sklearn_datasets.load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
    paths = []
    for index, (image, label) in enumerate(zip(images, digits.target)):
        path = os.path.join(root, str(label), f"{index:04d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tf.io.write_file(path, tf.io.encode_png(image))
        paths.append(path)
    return paths[:3]


def _run(*argv):
    """`(exit status, stdout lines, stderr)` of `run_command(argv)`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main.run_command(list(argv))
    return status, out.getvalue().splitlines(), err.getvalue()


@pytest.mark.slow
class SmallDataTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.root = tempfile.mkdtemp(prefix="kd_tf_small-")
        self.data_dir = os.path.join(self.root, "digits")
        self.images = _digits_tree(self.data_dir)
        # Only what any run on these folders needs; the flag files add 2 epochs.
        self.common = (
            "--data_source=directory",
            f"--data_dir={self.data_dir}",
            f"--saved_models_dir={self.root}/saved_models",
            f"--log_dir={self.root}/logs",
        )

    def _flagfile(self, stage, *argv):
        path = os.path.join(self.root, f"{stage}.cfg")
        with open(path, "w") as f:
            f.write("\n".join((f"--stage={stage}", "--epochs=2", *argv)) + "\n")
        return path

    def test_every_stage_with_the_default_flags(self):
        status, _, err = _run("--stage=teacher", *self.common)
        self.assertEqual(status, 2)
        self.assertLen(err.strip().splitlines(), 1)
        self.assertRegex(
            err, r"--model=lenet_bn needs images of at least 16x16 pixels, the data set's are "
            r"8x8: pick another --model \(.*seed_cnn"
        )

        # compare runs teacher, student (of that teacher) and scratch with the
        # flags of their files and of the command line: each stage once.
        flagfiles = {
            "teacher": self._flagfile("teacher", "--model=seed_cnn"),
            "student": self._flagfile("student"),
            "scratch": self._flagfile("scratch"),
        }
        status, _, err = _run(
            "--stage=compare", *self.common, *(f"--{s}_flagfile={p}" for s, p in flagfiles.items())
        )
        self.assertEqual(status, 0, err)
        (compare_dir,) = os.listdir(os.path.join(self.root, "saved_models", "compare"))
        runs = reporting.read_json(
            os.path.join(self.root, "saved_models", "compare", compare_dir, "report.json")
        )["runs"]
        teacher, student, scratch = (
            reporting.read_json(os.path.join(runs[stage], "assets.extra", "report.json"))
            for stage in ("teacher", "student", "scratch")
        )
        counts = teacher["data"]
        train_split = counts["train_examples"] + counts["validation_examples"]
        self.assertEqual((train_split, counts["test_examples"]), (1442, 355))  # every 5th held out
        self.assertEqual(counts["validation_examples"], 1442 // 12)
        self.assertIsNone(teacher["flags"]["validation_examples"])
        self.assertEqual(teacher["data"]["background"], "dark")
        self.assertEqual(student["teacher_dir"], runs["teacher"])
        self.assertEqual((student["model"], scratch["model"]), ("seed_mlp", "seed_mlp"))

        status, lines, err = _run(
            "--stage=predict", f"--model_dir={runs['student']}", f"--images={','.join(self.images)}"
        )
        self.assertEqual(status, 0, err)
        self.assertLen(lines, len(self.images))
        for line, path in zip(lines, self.images):
            self.assertRegex(line, rf"^{path} class=\d top3=")
