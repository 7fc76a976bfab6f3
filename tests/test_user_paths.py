"""User mistakes about paths and image sizes: one line, exit status 2, no
traceback (defect 4); a `.tflite` never overwrites a file (defect 7).

The cases run in-process through `kd_tf.main.run_command`, the same code as
`python -m kd_tf.main` after flag parsing (whose one-line refusals as a process
are checked in tests/test_main.py and tests/test_bad_data_input.py). A
`--backup_dir` holding a
backup of another model is in tests/test_backup.py (`RunFieldsTest`).
"""

import contextlib
import errno
import gzip
import io
import os
import shutil
import struct
import tempfile
import unittest
from unittest import mock

import helpers
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import atomic, lite, main, models
from kd_tf.errors import UserError


def _writable(directory):
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _unwritable_dir(parent):
    """A directory this process cannot create files in: a mode-0555 one, or
    (as root, which ignores modes) /sys where the kernel refuses."""
    directory = os.path.join(parent, "read_only")
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o555)
    for candidate in (directory, "/sys"):
        if os.path.isdir(candidate) and not _writable(candidate):
            return candidate
    raise unittest.SkipTest("no unwritable directory on this machine")


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path + ".gz", "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _idx_dir(parent, size):
    """Four IDX files of a 3-class data set of `size` x `size` images."""
    directory = os.path.join(parent, f"idx_{size}")
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 96), ("t10k", 32)):
        _write_idx(
            os.path.join(directory, f"{prefix}-images-idx3-ubyte"),
            rng.integers(0, 256, (count, size, size)),
        )
        _write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte"), np.arange(count) % 3)
    return directory


class _Command(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()
        cls.model_dir = helpers.tiny_export(os.path.join(cls.root, "model"))

    @classmethod
    def tearDownClass(cls):
        for root, dirs, _ in os.walk(cls.root):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def refused(self, *argv):
        """The one `kd_tf: error:` line of a run that must end with status 2."""
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = main.run_command([f"--log_dir={self.root}/logs", *argv])
        self.assertNotIn("Traceback", stderr.getvalue())
        lines = [line for line in stderr.getvalue().splitlines() if line.startswith("kd_tf:")]
        self.assertEqual(status, main.EXIT_USER_ERROR, lines)
        self.assertLen(lines, 1)
        self.assertStartsWith(lines[0], "kd_tf: error: ")
        return lines[0]

    def succeeds(self, *argv):
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            status = main.run_command([f"--log_dir={self.root}/logs", *argv])
        self.assertEqual(status, 0, stderr.getvalue()[-2000:])


class LogitsCacheDirTest(_Command):
    def student(self, cache_dir):
        return (
            "--stage=student",
            f"--teacher_dir={self.model_dir}",
            "--min_teacher_accuracy=0",  # an untrained teacher
            "--logits_cache=disk",
            f"--logits_cache_dir={cache_dir}",
            "--epochs=1",
            "--train_examples=256",
            "--validation_examples=128",
            f"--saved_models_dir={self.root}/saved_models",
        )

    def test_missing_logits_cache_dir(self):
        missing = os.path.join(self.root, "no", "such", "dir")
        line = self.refused(*self.student(missing))
        self.assertEqual(
            line,
            f"kd_tf: error: --logits_cache_dir {missing} does not exist: create it or pass "
            "another --logits_cache_dir",
        )
        self.assertFalse(os.path.exists(os.path.join(self.root, "saved_models")))

    def test_unwritable_logits_cache_dir(self):
        read_only = _unwritable_dir(self.root)
        line = self.refused(*self.student(read_only))
        self.assertRegex(
            line,
            f"could not write {read_only}/kd_tf_logits_.* \\(.+\\): "
            "free some space or fix the permissions, or pass another --logits_cache_dir",
        )


class OutputImageTest(_Command):
    def predict(self, output_image):
        return (
            "--stage=predict",
            f"--model_dir={self.model_dir}",
            "--test_index=0,1",
            f"--output_image={output_image}",
        )

    def test_a_missing_directory_is_created(self):
        path = os.path.join(self.root, "new", "dir", "grid.png")
        self.succeeds(*self.predict(path))
        with open(path, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertEqual(os.listdir(os.path.dirname(path)), ["grid.png"])

    def test_an_unwritable_directory(self):
        read_only = _unwritable_dir(self.root)
        for path in (
            os.path.join(read_only, "grid.png"),
            os.path.join(read_only, "sub", "grid.png"),
        ):
            with self.subTest(path=path):
                line = self.refused(*self.predict(path))
                self.assertIn(f"could not write {path} (", line)
                self.assertIn("pass another --output_image", line)


class TFLitePathTest(_Command):
    def tflite(self, path):
        return ("--stage=tflite", f"--model_dir={self.model_dir}", f"--tflite_path={path}")

    def test_an_unwritable_directory_is_refused_before_converting(self):
        read_only = _unwritable_dir(self.root)
        path = os.path.join(read_only, "model.tflite")
        with mock.patch.object(lite, "convert", side_effect=AssertionError("converted")):
            line = self.refused(*self.tflite(path))
        self.assertIn(f"could not write {path} (", line)
        self.assertIn("pass another --tflite_path", line)

    def test_a_file_created_while_converting_is_not_overwritten(self):
        """Defect 7: the path is free when checked, taken before the write."""
        path = os.path.join(self.root, "raced.tflite")
        convert = lite.convert

        def convert_while_another_writer_creates_the_file(*args, **kwargs):
            content = convert(*args, **kwargs)
            with open(path, "wb") as f:
                f.write(b"the other writer's file")
            return content

        with mock.patch.object(lite, "convert", convert_while_another_writer_creates_the_file):
            line = self.refused(*self.tflite(path))
        self.assertIn(f"{path} already exists: pass another --tflite_path or remove it", line)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"the other writer's file")
        self.assertFalse([name for name in os.listdir(self.root) if ".tmp-" in name], "no debris")
        self.assertFalse(os.path.exists(lite.report_path(path)))


class ExclusiveWriteTest(tf.test.TestCase):
    """`atomic.write_file(..., exclusive=True)`: hard-linked into place, so an
    existing file is never replaced, with or without hard links."""

    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp(dir=self.get_temp_dir())
        self.path = os.path.join(self.directory, "model.tflite")

    def write(self, text):
        def write(temporary):
            with open(temporary, "w") as f:
                f.write(text)

        atomic.write_file(self.path, write, exclusive=True)

    def read(self):
        with open(self.path) as f:
            return f.read()

    def test_writes_a_new_file_and_refuses_an_existing_one(self):
        no_link = mock.patch.object(
            atomic.os, "link", side_effect=OSError(errno.EPERM, "Operation not permitted")
        )
        for links in ("hard links", "no hard links"):
            with (
                self.subTest(links=links),
                no_link if links == "no hard links" else contextlib.nullcontext(),
            ):
                self.write("first")
                self.assertEqual(self.read(), "first")
                with self.assertRaises(FileExistsError):
                    self.write("second")
                self.assertEqual(self.read(), "first")
                self.assertEqual(os.listdir(self.directory), ["model.tflite"])
                os.remove(self.path)


@pytest.mark.slow
class ImagesTooSmallTest(_Command):
    def teacher(self, idx_dir, model):
        return (
            "--stage=teacher",
            f"--model={model}",
            "--data_source=idx",
            f"--idx_dir={idx_dir}",
            "--validation_examples=32",
            "--batch_size=32",
            "--epochs=1",
            f"--saved_models_dir={self.root}/saved_models",
        )

    def test_models_for_larger_images_on_8x8_images(self):
        idx_dir = _idx_dir(self.root, 8)
        for model in ("lenet_bn", "compact_cnn"):
            with self.subTest(model=model):
                line = self.refused(*self.teacher(idx_dir, model))
                self.assertEqual(
                    line,
                    f"kd_tf: error: --model={model} needs images of at least 16x16 pixels, the "
                    "data set's are 8x8: pick another --model (seed_cnn, seed_mlp, "
                    "resnet_small, mobilenet_small take them)",
                )
                self.assertFalse(os.path.exists(os.path.join(self.root, "saved_models")))
        self.succeeds(*self.teacher(idx_dir, "seed_mlp"))

    def test_each_model_builds_at_its_stated_minimum_and_not_below(self):
        for name, spec in models.MODELS.items():
            with self.subTest(model=name):
                size = spec.min_image_size
                models.build_model(name, (size, size, 1), 10)
                if size > 1:
                    with self.assertRaisesRegex(UserError, f"at least {size}x{size}"):
                        models.build_model(name, (size - 1, size + 8, 1), 10)
                    with self.assertRaises(ValueError):
                        models.MODELS[name].build((size - 1, size - 1, 1), 10)


if __name__ == "__main__":
    tf.test.main()
