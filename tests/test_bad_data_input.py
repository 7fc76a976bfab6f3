"""Bad data input through the command line, with `--data_source=directory`
and `--data_source=tfrecord`.

Every refused run must end, before training starts, with exit status 2, one
`kd_tf: error:` line, the last on stderr, that names the problem and the flag
to fix, no traceback on stdout or stderr, the earlier export it was asked to
`--overwrite` byte-for-byte as it was (no debris beside it, no
`--saved_models_dir` created), and nothing left in its `TMPDIR`. Mixed image
sizes with `--image_size=H,W`, and 1-bit BMPs, must train and export instead.

Each class writes its data and runs all its cases in `setUpClass`; the tests
check their outcomes. One case of `DirectorySourceTest`, a refusal, is a
`python -m kd_tf.main` process (`helpers.start_kd_tf`), which checks the
command line itself: the exit status, the last line of stderr, the `TMPDIR`
of the environment (the same code for every source). The others run
`kd_tf.main.run_command`, the same code after flag parsing, in this process
(a process each would start TensorFlow once per case), with `TMPDIR` set
around it; the runs in `TRAINING` train and export, and in the others
training is replaced by a failure, so that a refusal after training began
fails the case.
Library-level refusals are in tests/test_data_directory.py; teachers breaking
the serving contract on MNIST in tests/test_main.py.
"""

import contextlib
import io
import os
import shutil
import subprocess
import tempfile
import traceback
from typing import NamedTuple
from unittest import mock

import helpers
import keras
import numpy as np
import PIL.Image
import pytest
import tensorflow as tf

from kd_tf import export, main, training
from kd_tf.data import tfrecord

# The cases that must train and export (in process).
TRAINING = ("mixed_sizes_resized", "one_bit_bmp")
AUTOGRAPH_FILE = "__autograph_generated_file"
# kd_tf's status after a user error (docs/reliability.md, What happens when ...), spelled
# out rather than read from kd_tf.main.
EXIT_USER_ERROR = 2
IMAGE = (8, 8, 1)
# A scratch run on a few 8x8 images: it must get past the data and export.
TINY_RUN = (
    "--stage=scratch",
    "--model=seed_mlp",
    "--epochs=1",
    "--batch_size=4",
    "--train_examples=8",
    "--validation_examples=4",
)
# A student run whose teacher is checked against the data set.
STUDENT_RUN = ("--stage=student", "--epochs=1", "--batch_size=4", "--validation_examples=4")


class Outcome(NamedTuple):
    status: int
    stdout: str
    stderr: str
    case_dir: str


def _png(image):
    return tf.io.encode_png(np.asarray(image, np.uint8)).numpy()


def _write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    return path


def _image(index, shape=IMAGE):
    return np.full(shape, 20 * index % 256, np.uint8)


def _tree(root, classes=("cat", "dog"), count=10, shape=IMAGE):
    """`count` PNGs of `shape` per class folder, `root/<class>/<i>.png`."""
    for c, name in enumerate(classes):
        for i in range(count):
            _write(os.path.join(root, name, f"{i}.png"), _png(_image(i + c, shape)))
    return root


def _one_bit_bmps(root, classes=("cat", "dog"), count=10):
    """`count` 1-bit (black and white) BMPs of `IMAGE` per class folder,
    written by Pillow (a dependency of matplotlib), `root/<class>/<i>.bmp`."""
    pixels = np.random.default_rng(0).random((len(classes), count, *IMAGE[:2])) > 0.5
    for c, name in enumerate(classes):
        for i in range(count):
            path = os.path.join(root, name, f"{i}.bmp")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            PIL.Image.fromarray(pixels[c, i]).convert("1").save(path, "BMP")
    return root


def _records(path, examples):
    """A TFRecord file of `(encoded image, label)` examples."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for encoded, label in examples:
            writer.write(tfrecord.example(encoded, label))
    return path


def _good_records(count=10, shape=IMAGE, labels=2):
    return [(_png(_image(i, shape)), i % labels) for i in range(count)]


def _teachers(root):
    """Exports no data set here can be converted to: one taking 4 channels,
    one predicting 10 classes (the data sets here have 2)."""
    four_channels = export.export_model(
        keras.Sequential(
            [keras.Input((8, 8, 4), dtype="uint8"), keras.layers.Flatten(), keras.layers.Dense(2)]
        ),
        os.path.join(root, "teacher_four_channels"),
        check_images=np.zeros((2, 8, 8, 4), np.uint8),
    )
    ten_classes = helpers.tiny_export(os.path.join(root, "teacher_ten_classes"))
    return four_channels, ten_classes


def _argv(argv, case_dir, earlier):
    """`argv` writing under `case_dir`, with `--overwrite` of the export
    `earlier` unless it names its own `--export_dir`."""
    full = [
        *argv,
        f"--saved_models_dir={case_dir}/saved_models",
        f"--log_dir={case_dir}/logs",
    ]
    if not any(a.startswith("--export_dir=") for a in argv):
        full += [f"--export_dir={earlier}", "--overwrite"]
    return full


def _start(argv, case_dir):
    """A `python -m kd_tf.main` process of `argv` with `case_dir/tmp` as its TMPDIR."""
    return helpers.start_kd_tf(
        argv, env={"TMPDIR": os.path.join(case_dir, "tmp")}, stdout=subprocess.PIPE
    )


def _outcome(process, case_dir):
    """The `Outcome` of a process from `_start`, once it has ended."""
    try:
        stdout, stderr = process.communicate(timeout=helpers.PROCESS_TIMEOUT)
    finally:
        process.kill()
        process.wait()
    return Outcome(process.returncode, stdout, stderr, case_dir)


def _run_in_process(argv, case_dir, trains=False):
    """The `Outcome` of `main.run_command(argv)` with `case_dir/tmp` as TMPDIR;
    an exception (training beginning, unless it `trains`) is a traceback on
    stderr."""
    tmp = os.path.join(case_dir, "tmp")
    stdout, stderr = io.StringIO(), io.StringIO()
    began = AssertionError("training began")
    with (
        mock.patch.dict(os.environ, {"TMPDIR": tmp}),
        mock.patch.object(tempfile, "tempdir", tmp),
        contextlib.nullcontext()
        if trains
        else mock.patch.object(training, "fit_and_restore_best", side_effect=began),
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        try:
            status = main.run_command(argv)
        except Exception:  # any exception fails the case, with its traceback
            traceback.print_exc()
            status = None
    return Outcome(status, stdout.getvalue(), stderr.getvalue(), case_dir)


class _BadDataCase(tf.test.TestCase):
    """Subclasses set `cases(cls)`: `{name: argv}`, written under `cls.root`,
    and `processes`: the cases run as `python -m kd_tf.main` processes
    (meanwhile, the others run in process)."""

    processes = ()

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp(prefix="kd_tf_bad_data-")
        cls.earlier = helpers.tiny_export(os.path.join(cls.root, "earlier_export"))
        cls.earlier_files = helpers.snapshot(cls.earlier)
        runs = {}
        for name, argv in cls.cases().items():
            case_dir = os.path.join(cls.root, "cases", name)
            earlier = os.path.join(case_dir, "exports", "earlier")
            # Each case gets its own copy of the earlier export to overwrite.
            shutil.copytree(cls.earlier, earlier)
            os.makedirs(os.path.join(case_dir, "tmp"))
            runs[name] = (_argv(argv, case_dir, earlier), case_dir)
        processes = {name: _start(*runs[name]) for name in cls.processes}
        # Meanwhile, the other cases in this process.
        cls.outcomes = {
            name: _run_in_process(*run, trains=name in TRAINING)
            for name, run in runs.items()
            if name not in processes
        }
        for name, process in processes.items():
            cls.outcomes[name] = _outcome(process, runs[name][1])

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def assert_clean(self, outcome):
        """No traceback, nothing left in TMPDIR."""
        for stream in (outcome.stdout, outcome.stderr):
            self.assertFalse("Traceback" in stream, f"a traceback: ...{stream[-1500:]}")
        left = os.listdir(os.path.join(outcome.case_dir, "tmp"))
        # TensorFlow's autograph writes the code it generates there and removes
        # it when the interpreter exits, which a case run in process does not.
        left = [name for name in left if not name.startswith(AUTOGRAPH_FILE)]
        self.assertEqual(left, [], "TMPDIR debris")

    def refused(self, name, *words):
        """The one error line of case `name`, which holds each of `words`."""
        outcome = self.outcomes[name]
        self.assert_clean(outcome)
        self.assertEqual(outcome.status, EXIT_USER_ERROR, outcome.stderr[-3000:])
        lines = helpers.kd_tf_lines(outcome.stderr)
        self.assertLen(lines, 1, outcome.stderr[-3000:])
        self.assertStartsWith(lines[0], "kd_tf: error: ")
        self.assertEqual(outcome.stderr.rstrip("\n").splitlines()[-1], lines[0])
        for word in words:
            self.assertIn(word, lines[0])
        self.assertNotRegex(outcome.stderr, r"\] training: ", "refused only after training began")
        exports = os.path.join(outcome.case_dir, "exports")
        self.assertEqual(os.listdir(exports), ["earlier"], "debris beside the earlier export")
        self.assertEqual(helpers.snapshot(os.path.join(exports, "earlier")), self.earlier_files)
        self.assertFalse(os.path.exists(os.path.join(outcome.case_dir, "saved_models")))
        return lines[0]

    def succeeded(self, name):
        """Case `name` exported into its `exports/new`; returns the report."""
        outcome = self.outcomes[name]
        self.assert_clean(outcome)
        self.assertEqual(outcome.status, 0, outcome.stderr[-3000:])
        self.assertEqual(helpers.kd_tf_lines(outcome.stderr), [])
        exports = os.path.join(outcome.case_dir, "exports")
        self.assertEqual(helpers.snapshot(os.path.join(exports, "earlier")), self.earlier_files)
        return helpers.read_report(os.path.join(exports, "new"))


@pytest.mark.slow
class DirectorySourceTest(_BadDataCase):
    """`--data_source=directory`: image folders, one per class."""

    processes = ("mixed_sizes",)  # a refusal

    @classmethod
    def cases(cls):
        data = os.path.join(cls.root, "data")
        cls.missing = os.path.join(data, "no", "such", "dir")
        cls.empty = os.path.join(data, "empty")
        os.makedirs(cls.empty)
        cls.single = _tree(os.path.join(data, "single"), classes=("cat",))
        cls.no_images = _tree(os.path.join(data, "no_images"))
        _write(os.path.join(cls.no_images, "bird", "notes.txt"), b"no image here")
        cls.text_png = _tree(os.path.join(data, "text_png"))
        cls.text_png_file = _write(os.path.join(cls.text_png, "dog", "3a.png"), b"not a png")
        cls.empty_jpg = _tree(os.path.join(data, "empty_jpg"))
        cls.empty_jpg_file = _write(os.path.join(cls.empty_jpg, "cat", "zero.jpg"), b"")
        cls.dangling = _tree(os.path.join(data, "dangling"))
        cls.dangling_file = os.path.join(cls.dangling, "cat", "moved.png")
        os.symlink(os.path.join(data, "gone.png"), cls.dangling_file)
        cls.mixed = _tree(os.path.join(data, "mixed"), classes=("cat",))
        _tree(cls.mixed, classes=("dog",), shape=(16, 12, 1))
        # 4 images a class: every 5th is held out, so none; training would begin.
        cls.too_few = _tree(os.path.join(data, "too_few"), count=4)
        good = _tree(os.path.join(data, "good"))
        cls.with_validation = os.path.join(data, "with_validation")
        for split in ("train", "validation", "test"):
            _tree(os.path.join(cls.with_validation, split))
        cls.two_validations = os.path.join(data, "two_validations")
        for split in ("train", "validation", "val", "test"):
            _tree(os.path.join(cls.two_validations, split))
        # A class folder in test/ only: its images could never be classified right.
        cls.unseen_class = os.path.join(data, "unseen_class")
        for split in ("train", "test"):
            _tree(os.path.join(cls.unseen_class, split))
        _tree(os.path.join(cls.unseen_class, "test"), classes=("bird",), count=6)
        cls.train_only = os.path.join(data, "train_only")
        _tree(os.path.join(cls.train_only, "train"))
        cls.no_test = os.path.join(data, "no_test")
        for split in ("train", "validation"):
            _tree(os.path.join(cls.no_test, split))
        cls.test_lacks_a_class = os.path.join(data, "test_lacks_a_class")
        _tree(os.path.join(cls.test_lacks_a_class, "train"), classes=("cat", "dog", "owl"))
        _tree(os.path.join(cls.test_lacks_a_class, "test"))
        cls.one_bit = _one_bit_bmps(os.path.join(data, "one_bit"))
        four_channels, ten_classes = _teachers(cls.root)
        source = "--data_source=directory"
        return {
            "missing": (*TINY_RUN, source, f"--data_dir={cls.missing}"),
            "no_data_dir": (*TINY_RUN, source),
            "empty": (*TINY_RUN, source, f"--data_dir={cls.empty}"),
            "single_class": (*TINY_RUN, source, f"--data_dir={cls.single}"),
            "no_images": (*TINY_RUN, source, f"--data_dir={cls.no_images}"),
            "too_few_images": (*TINY_RUN, source, f"--data_dir={cls.too_few}"),
            "text_png": (*TINY_RUN, source, f"--data_dir={cls.text_png}"),
            "empty_jpg": (*TINY_RUN, source, f"--data_dir={cls.empty_jpg}"),
            "dangling_link": (*TINY_RUN, source, f"--data_dir={cls.dangling}"),
            "mixed_sizes": (*TINY_RUN, source, f"--data_dir={cls.mixed}"),
            "validation_folder_and_flag": (*TINY_RUN, source, f"--data_dir={cls.with_validation}"),
            "two_validation_folders": (*TINY_RUN, source, f"--data_dir={cls.two_validations}"),
            "unseen_class": (*TINY_RUN, source, f"--data_dir={cls.unseen_class}"),
            "train_only": (*TINY_RUN, source, f"--data_dir={cls.train_only}"),
            "no_test": (*TINY_RUN, source, f"--data_dir={cls.no_test}"),
            "test_lacks_a_class": (*TINY_RUN, source, f"--data_dir={cls.test_lacks_a_class}"),
            "one_bit_bmp": (
                *TINY_RUN,
                source,
                f"--data_dir={cls.one_bit}",
                f"--export_dir={cls.root}/cases/one_bit_bmp/exports/new",
            ),
            "mixed_sizes_resized": (
                *TINY_RUN,
                source,
                f"--data_dir={cls.mixed}",
                "--image_size=8,8",
                f"--export_dir={cls.root}/cases/mixed_sizes_resized/exports/new",
            ),
            "teacher_four_channels": (
                *STUDENT_RUN,
                source,
                f"--data_dir={good}",
                f"--teacher_dir={four_channels}",
            ),
            "teacher_ten_classes": (
                *STUDENT_RUN,
                source,
                f"--data_dir={good}",
                f"--teacher_dir={ten_classes}",
            ),
        }

    def test_missing_data_dir(self):
        line = self.refused("missing", f"--data_dir={self.missing} is not a directory")
        self.assertIn("one subfolder of images per class", line)

    def test_no_data_dir_flag(self):
        self.refused("no_data_dir", "--data_source=directory needs --data_dir=DIR")

    def test_empty_directory(self):
        self.refused("empty", f"--data_dir={self.empty} holds no class folders", "two classes")

    def test_single_class(self):
        self.refused("single_class", f"--data_dir={self.single} holds only 'cat'", "two classes")

    def test_class_folder_without_images(self):
        folder = os.path.join(self.no_images, "bird")
        self.refused("no_images", f"class folder {folder} holds no image", "--data_dir")

    def test_too_few_images_for_a_test_split(self):
        self.refused(
            "too_few_images",
            f"--data_dir={self.too_few} leaves no test image: --test_fraction=0.2",
            "add images, or train/ and test/ folders",
        )

    def test_unreadable_images(self):
        for name, path in (
            ("text_png", self.text_png_file),
            ("empty_jpg", self.empty_jpg_file),
            ("dangling_link", self.dangling_file),
        ):
            with self.subTest(name):
                self.refused(
                    name, f"cannot read {path} as an image", "fix or remove it from --data_dir"
                )

    def test_validation_folder_and_validation_examples(self):
        self.refused(
            "validation_folder_and_flag",
            f"--validation_examples holds out training images, but --data_dir={self.with_validation}"
            " has a validation folder",
        )
        self.refused("two_validation_folders", "keep one validation folder", "--data_dir")

    def test_mixed_sizes_need_image_size(self):
        self.refused("mixed_sizes", "the images have 2 sizes", "8x8", "16x12", "--image_size=H,W")
        report = self.succeeded("mixed_sizes_resized")
        self.assertEqual(report["data"]["image_shape"], [8, 8, 1])
        self.assertEqual(report["data"]["num_classes"], 2)

    def test_a_class_only_in_test_is_refused(self):
        bird, train = (os.path.join(self.unseen_class, *p) for p in (("test", "bird"), ("train",)))
        self.refused(
            "unseen_class",
            f"{bird}: no such class in {train}",
            f"add its training images to {train}, or remove the folder from --data_dir",
        )

    def test_split_folders_without_their_partner(self):
        self.refused(
            "train_only",
            f"--data_dir={self.train_only} has train/ but no test/: add "
            f"{self.train_only}/test with one folder of images per class",
            "move the class folders of train/ up into --data_dir",
        )
        self.refused(
            "no_test",
            f"--data_dir={self.no_test} has train/ and validation/ but no test/: add "
            f"{self.no_test}/test with one folder of images per class",
        )

    def test_a_class_missing_from_test(self):
        tree = self.test_lacks_a_class
        self.refused(
            "test_lacks_a_class",
            f"class 'owl' of {tree}/train has no test image: add {tree}/test/owl with its test "
            "images",
            f"or remove {tree}/train/owl to drop the class",
        )

    def test_one_bit_bmps_train(self):
        report = self.succeeded("one_bit_bmp")
        self.assertEqual(report["data"]["image_shape"], [8, 8, 1])
        self.assertEqual(report["data"]["num_classes"], 2)

    def test_teacher_the_data_cannot_be_converted_for(self):
        four_channels, ten_classes = (
            os.path.join(self.root, name)
            for name in ("teacher_four_channels", "teacher_ten_classes")
        )
        with self.subTest("four channels"):
            self.refused(
                "teacher_four_channels",
                f"teacher {four_channels} takes images of 4 channels but the data set's have 1",
                "--teacher_dir",
            )
        with self.subTest("ten classes"):
            self.refused(
                "teacher_ten_classes",
                f"teacher {ten_classes} predicts 10 classes but good has 2",
                "--teacher_dir",
            )


@pytest.mark.slow
class TFRecordSourceTest(_BadDataCase):
    """`--data_source=tfrecord`: train*.tfrecord and test*.tfrecord files."""

    @classmethod
    def cases(cls):
        data = os.path.join(cls.root, "data")
        good = _good_records()
        cls.missing = os.path.join(data, "no", "such", "dir")
        cls.empty = os.path.join(data, "empty")
        os.makedirs(cls.empty)
        cls.train_only = os.path.join(data, "train_only")
        _records(os.path.join(cls.train_only, "train.tfrecord"), good)

        def split_pair(name, train_file_content=None, train=good, test=good):
            directory = os.path.join(data, name)
            _records(os.path.join(directory, "test.tfrecord"), test)
            path = os.path.join(directory, "train.tfrecord")
            if train_file_content is None:
                _records(path, train)
            else:
                _write(path, train_file_content)
            return directory

        cls.not_example = split_pair("not_example")
        with tf.io.TFRecordWriter(os.path.join(cls.not_example, "train.tfrecord")) as writer:
            writer.write(b"not a tf.train.Example")
        cls.text_image = split_pair("text_image", train=[*good, (b"not a png", 1)])
        cls.empty_image = split_pair("empty_image", train=[(b"", 0), *good])
        cls.not_tfrecord = split_pair("not_tfrecord", b"plain text, not a TFRecord file\n")
        cls.no_records = split_pair("no_records", b"")
        cls.single = split_pair(
            "single_class", train=_good_records(labels=1), test=_good_records(labels=1)
        )
        cls.mixed = split_pair("mixed", train=[*good, *_good_records(shape=(16, 12, 1))])
        cls.mixed_splits = split_pair("mixed_splits", test=_good_records(shape=(16, 12, 1)))
        cls.good = split_pair("good")
        four_channels, _ = _teachers(cls.root)
        source = "--data_source=tfrecord"
        return {
            "missing": (*TINY_RUN, source, f"--data_dir={cls.missing}"),
            "no_data_dir": (*TINY_RUN, source),
            "empty": (*TINY_RUN, source, f"--data_dir={cls.empty}"),
            "train_only": (*TINY_RUN, source, f"--data_dir={cls.train_only}"),
            "not_example": (*TINY_RUN, source, f"--data_dir={cls.not_example}"),
            "text_image": (*TINY_RUN, source, f"--data_dir={cls.text_image}"),
            "empty_image": (*TINY_RUN, source, f"--data_dir={cls.empty_image}"),
            "not_tfrecord": (*TINY_RUN, source, f"--data_dir={cls.not_tfrecord}"),
            "no_records": (*TINY_RUN, source, f"--data_dir={cls.no_records}"),
            "single_class": (*TINY_RUN, source, f"--data_dir={cls.single}"),
            "mixed_sizes": (*TINY_RUN, source, f"--data_dir={cls.mixed}"),
            "mixed_splits": (*TINY_RUN, source, f"--data_dir={cls.mixed_splits}"),
            "mixed_sizes_resized": (
                *TINY_RUN,
                source,
                f"--data_dir={cls.mixed}",
                "--image_size=8,8",
                f"--export_dir={cls.root}/cases/mixed_sizes_resized/exports/new",
            ),
            "teacher_four_channels": (
                *STUDENT_RUN,
                source,
                f"--data_dir={cls.good}",
                f"--teacher_dir={four_channels}",
            ),
        }

    def test_missing_data_dir(self):
        self.refused("missing", f"--data_dir={self.missing} is not a directory", "train*.tfrecord")

    def test_no_data_dir_flag(self):
        self.refused("no_data_dir", "--data_source=tfrecord needs --data_dir=DIR")

    def test_directory_without_the_split_files(self):
        for name, directory, split in (
            ("empty", self.empty, "train"),
            ("train_only", self.train_only, "test"),
        ):
            with self.subTest(name):
                self.refused(name, f"--data_dir={directory} has no {split}*.tfrecord files")

    def test_records_that_are_not_image_examples(self):
        for name, directory in (
            ("not_example", self.not_example),
            ("text_image", self.text_image),
            ("empty_image", self.empty_image),
        ):
            with self.subTest(name):
                self.refused(
                    name,
                    f"{directory}/train.tfrecord holds a record that is not an "
                    "image-classification example",
                    "fix the files in --data_dir",
                )

    def test_a_file_that_is_not_a_tfrecord_file(self):
        self.refused(
            "not_tfrecord",
            f"cannot read {self.not_tfrecord}/train.tfrecord as a TFRecord file",
            "fix the files in --data_dir",
        )

    def test_files_without_records(self):
        self.refused(
            "no_records",
            f"the train*.tfrecord files of --data_dir={self.no_records} hold no record",
        )

    def test_single_class(self):
        self.refused(
            "single_class",
            f"the train records of --data_dir={self.single} hold one class only (label 0)",
            "at least two classes",
        )

    def test_mixed_sizes_need_image_size(self):
        for name in ("mixed_sizes", "mixed_splits"):
            with self.subTest(name):
                self.refused(name, "the images have 2 sizes", "8x8", "16x12", "--image_size=H,W")
        report = self.succeeded("mixed_sizes_resized")
        self.assertEqual(report["data"]["image_shape"], [8, 8, 1])
        self.assertEqual(report["data"]["num_classes"], 2)

    def test_teacher_the_data_cannot_be_converted_for(self):
        teacher = os.path.join(self.root, "teacher_four_channels")
        self.refused(
            "teacher_four_channels",
            f"teacher {teacher} takes images of 4 channels but the data set's have 1",
            "--teacher_dir",
        )


if __name__ == "__main__":
    tf.test.main()
