"""Helpers shared by the kd_tf tests; the pytest fixtures built on them are in
tests/conftest.py.

- `slice_argv`, `slice_config`: the flags of a stage run on a small slice of
  real MNIST that writes everything under one directory; `TEACHER_ARGV`, the
  session's teacher (`TrainedExport`).
- `snapshot`: the SHA-256 of every file of a directory (exports, backups).
- `read_report`, `exported_variables`: what an export holds.
- `tiny_model`, `random_images`, `save_module`, `failing_writer`: synthetic
  models, images and SavedModels for the fast tests, and a failing export;
  `float_mnist_teacher`: a `.keras` teacher taking float images;
  `write_digit_files`: image files of test digits, as users pass them.
- `start_kd_tf`, `run_kd_tf`, `read_until`, `wait_all`: `python -m kd_tf.main`
  processes; `run_on_full_disk`, one on a small tmpfs that fills up;
  `CommandTestCase`, its code path in process (`main.run_command`).

pytest puts tests/ on `sys.path` (rootdir-relative "prepend" imports, no
`__init__.py`), so the test files `import helpers`.
"""

import contextlib
import hashlib
import io
import os
import subprocess
import sys
import threading
import time
import unittest
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from kd_tf import command_line, cpu, data, export, main, reporting
from kd_tf.export import writing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SHAPE = (28, 28, 1)
# A run on a slice of real MNIST: a few steps per epoch, the full test split.
SLICE = ("--epochs=2", "--train_examples=384", "--validation_examples=256", "--batch_size=64")
# How long a test waits for a process before it takes it for hung and kills
# it: a guard against hangs, not a speed check, so far above any run's time
# on the slowest machine (tests bound nothing by the clock).
PROCESS_TIMEOUT = 600
# A test that compares two code paths trains in the precision it means:
# `--precision=auto` is mixed_bfloat16 on an AMX CPU, float32 elsewhere, and
# two paths round bfloat16 differently.
FLOAT32 = "--precision=float32"
# Where TensorFlow hands bfloat16 ops to oneDNN (an AVX-512 CPU) but
# ONEDNN_MAX_CPU_ISA caps oneDNN below AVX512_CORE (a weaker CPU emulated),
# a bfloat16 layer aborts the process: tests of bfloat16 skip there.
NO_BFLOAT16 = "ONEDNN_MAX_CPU_ISA caps oneDNN below AVX512_CORE on this AVX-512 CPU"
requires_bfloat16 = unittest.skipIf(cpu.describe().bfloat16_kernels is None, NO_BFLOAT16)

# The session's teacher (tests/conftest.py, `mnist_teacher`): `seed_mlp`
# through the teacher stage, 2 epochs on 2048 training images (about 80 %
# test accuracy, a few seconds). Any test that needs "a teacher" or "an
# export" rather than a particular model uses it; an MLP keeps the TFLite
# interpreter's passes over the 10,000 test images cheap.
TEACHER_MODEL = "seed_mlp"
TEACHER_TRAIN_EXAMPLES = 2048
TEACHER_ARGV = (
    "--stage=teacher",
    f"--model={TEACHER_MODEL}",
    f"--train_examples={TEACHER_TRAIN_EXAMPLES}",
)


class TrainedExport(NamedTuple):
    """A stage run that wrote everything under `root` (`saved_models/`,
    `logs/`); `report` is what `stages.run` returned."""

    root: str
    report: dict

    @property
    def export_dir(self):
        return self.report["export_dir"]


def slice_argv(root, *argv):
    """The flags of a run on `SLICE` exporting into `<root>/saved_models` and
    logging into `<root>/logs`; `argv` comes last, so it overrides them."""
    return [*SLICE, f"--saved_models_dir={root}/saved_models", f"--log_dir={root}/logs", *argv]


def slice_config(root, *argv):
    """The validated `Config` of `slice_argv(root, *argv)`."""
    return command_line.parse(slice_argv(root, *argv))


def snapshot(directory):
    """`{path relative to directory: SHA-256 of its bytes}` of every file under
    `directory`, hidden ones included."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return files


def read_report(export_dir):
    """The `report.json` an export holds."""
    return reporting.read_json(os.path.join(export_dir, export.ASSETS_EXTRA, "report.json"))


def exported_variables(export_dir):
    """`{name: numpy value}` of every variable of the SavedModel in
    `export_dir`, reloaded from disk.

    The checkpoint lists the variables in an order that changes from one
    process to the next, so they are keyed by name. Names are the same in
    every process, but within one process Keras numbers its seed generators
    (`seed_generator_1/...`); the order is stable within one process."""
    return {v.name: v.numpy() for v in tf.saved_model.load(export_dir).variables}


def tiny_model(num_classes=10, seed=0):
    """An untrained, seeded dense model on uint8 images (rescale, flatten, dense)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE_SHAPE, dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1.0 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def tiny_export(path, overwrite=False):
    """`tiny_model()` exported at `path` (a stand-in teacher or model)."""
    images = np.zeros((2, *IMAGE_SHAPE), np.uint8)
    return export.export_model(tiny_model(), path, check_images=images, overwrite=overwrite)


def float_mnist_teacher(path, first, stop, *, seed, hidden, epochs):
    """A `.keras` MLP taking float32 images in [0, 1] (a foreign teacher),
    trained on MNIST training images `first`..`stop - 1` scaled to [0, 1]
    and saved at `path`; returns the model."""
    train = data.read_packaged_mnist()[0].subset(first, stop)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(IMAGE_SHAPE, dtype="float32"),
        keras.layers.Flatten(),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train.images / 255.0, train.labels, epochs=epochs, batch_size=64, verbose=0)
    model.save(path)
    return model


def random_images(count):
    """`count` uniformly random uint8 images of `IMAGE_SHAPE` (seeded)."""
    return np.random.default_rng(0).integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8)


def save_module(path, fn, spec, signature="serving_default"):
    """A SavedModel at `path` whose only signature, `signature`, is `fn` on `spec`."""
    module = tf.Module()
    module.fn = tf.function(fn, input_signature=[spec])
    tf.saved_model.save(module, path, signatures={signature: module.fn})
    return path


def failing_writer(error):
    """A stand-in for `kd_tf.export.writing._write_saved_model` that writes
    the SavedModel, then raises `error` (a full disk, Ctrl-C, ...)."""
    write = writing._write_saved_model

    def write_then_fail(*args):
        write(*args)
        raise error

    return write_then_fail


def _write_png(path, image):
    """`image` (uint8-valued, `[H, W, C]`) as a PNG file."""
    tf.io.write_file(path, tf.io.encode_png(tf.cast(image, tf.uint8)))


def write_image_tree(root, split, images, labels):
    """`images` as PNG files in Keras's class folders, `root/split/<label>/NNNNN.png`."""
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = os.path.join(root, split, str(label))
        os.makedirs(folder, exist_ok=True)
        _write_png(os.path.join(folder, f"{i:05d}.png"), image)


def write_mnist_tree(root, train_count, test_count):
    """The first `train_count` and `test_count` real MNIST training and test
    images as a class-folder tree with `train/` and `test/`; returns `root`."""
    train, test = data.read_packaged_mnist()
    write_image_tree(root, "train", train.images[:train_count], train.labels[:train_count])
    write_image_tree(root, "test", test.images[:test_count], test.labels[:test_count])
    return root


def write_digit_files(directory, digits):
    """Image files made from the first 7 of `digits` (uint8 `[N, 28, 28, 1]`),
    as a user would pass them to `--stage=predict`: 4 plain PNGs, a large
    dark-on-light PNG, an RGB PNG, a large RGB JPEG, and a text file that is no
    image. Returns `{file name: index of the digit it holds}`."""
    os.makedirs(directory)
    files = {}
    for i in range(4):
        files[f"plain{i}.png"] = i
        _write_png(os.path.join(directory, f"plain{i}.png"), digits[i])
    dark_on_light = tf.image.resize(255.0 - digits[4], (112, 112))
    _write_png(os.path.join(directory, "inverted_large.png"), tf.round(dark_on_light))
    files["inverted_large.png"] = 4
    _write_png(os.path.join(directory, "rgb.png"), np.tile(digits[5], (1, 1, 3)))
    files["rgb.png"] = 5
    rgb_large = tf.image.resize(np.tile(digits[6], (1, 1, 3)), (84, 84))
    tf.io.write_file(
        os.path.join(directory, "rgb_large.jpg"),
        tf.io.encode_jpeg(tf.cast(tf.round(rgb_large), tf.uint8), quality=95),
    )
    files["rgb_large.jpg"] = 6
    with open(os.path.join(directory, "notes.txt"), "w") as f:
        f.write("not an image")
    return files


def start_kd_tf(argv, *, env=None, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE):
    """`python -m kd_tf.main *argv` started from the repository (so it runs
    this checkout's kd_tf), with `env` added to the environment; stderr is
    text."""
    return subprocess.Popen(
        [sys.executable, "-m", "kd_tf.main", *argv],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=stdout,
        stderr=stderr,
        text=True,
    )


def run_kd_tf(*argvs):
    """Runs one `python -m kd_tf.main` process per argument list, all at once;
    returns `[(exit status, stdout, stderr)]` in the same order."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    processes = [start_kd_tf(argv, stdout=subprocess.PIPE) for argv in argvs]
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=max(1, deadline - time.monotonic()))
            results.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            process.kill()
            process.wait()
    return results


def read_until(process, text):
    """Reads the text stderr of `process` (`start_kd_tf`) until a line holds
    `text`; returns the lines read. Fails if the process ends first, or is
    killed after `PROCESS_TIMEOUT` (a hang)."""
    watchdog = threading.Timer(PROCESS_TIMEOUT, process.kill)
    watchdog.start()
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if text in line:
                return lines
    finally:
        watchdog.cancel()
    raise AssertionError(f"no line holds {text!r}: ...{''.join(lines)[-2000:]}")


# Runs its arguments after mounting a tmpfs of "$1" KiB on "$2", then lists
# what is left on it (the mount ends with the namespace).
_LEFT = "--- left on the tmpfs:"
_ON_SMALL_TMPFS = (
    'mount -t tmpfs -o size="$1"k tmpfs "$2" || exit 99; dir="$2"; shift 2; '
    f'"$@"; status=$?; echo "{_LEFT}"; ls -A "$dir"; exit $status'
)


def run_on_full_disk(directory, kilobytes, argv, timeout=PROCESS_TIMEOUT):
    """Runs `python -m kd_tf.main *argv` where `directory` (which must exist)
    is a tmpfs of `kilobytes` KiB: a disk that fills up, without root, in a
    user and mount namespace of its own (`unshare`).

    Returns:
        `(exit status, stderr, names left in directory)`.

    Raises:
        unittest.SkipTest: the machine has no unprivileged user namespaces.
    """
    command = [
        "unshare", "--user", "--map-root-user", "--mount",
        "sh", "-c", _ON_SMALL_TMPFS, "sh", str(kilobytes), directory,
        sys.executable, "-m", "kd_tf.main", *argv,
    ]
    try:
        process = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError:
        raise unittest.SkipTest("needs unshare (util-linux)") from None
    if process.returncode == 99 or "unshare:" in process.stderr:
        raise unittest.SkipTest(
            f"needs unprivileged user namespaces and tmpfs: {process.stderr.strip()[-200:]}"
        )
    return process.returncode, process.stderr, process.stdout.split(_LEFT)[-1].split()


def kd_tf_lines(stderr):
    """The lines kd_tf itself wrote to `stderr` (`kd_tf: ...`)."""
    return [line for line in stderr.splitlines() if line.startswith("kd_tf:")]


def wait_all(processes):
    """Exit statuses of `processes`; kills them all if one outlives `PROCESS_TIMEOUT`."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    try:
        return [p.wait(timeout=max(1, deadline - time.monotonic())) for p in processes]
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
            p.wait()
        raise


class CommandTestCase(tf.test.TestCase):
    """Runs `main.run_command` in process, on a one-epoch slice run that
    writes under `self.root`, and checks the one-line contract of
    `python -m kd_tf.main` (use with the `class_root` fixture)."""

    def command_argv(self, *argv):
        """The whole argument list `run_command(*argv)` runs (a process can
        run it too)."""
        return slice_argv(self.root, "--epochs=1", "--train_examples=256", *argv)

    def run_command(self, *argv):
        """Returns `(status, kd_tf lines on stderr)`."""
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = main.run_command(self.command_argv(*argv))
        lines = kd_tf_lines(stderr.getvalue())
        self.assertNotIn("Traceback", stderr.getvalue())
        return status, lines

    def assert_refused(self, argv, status, pattern):
        """`argv` ends with `status` and one line matching `pattern`."""
        got, lines = self.run_command(*argv)
        self.assertEqual(got, status, lines)
        self.assertLen(lines, 1)
        self.assertRegex(lines[0], pattern)
        return lines[0]
