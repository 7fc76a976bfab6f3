"""Bad input, failures, interruption and determinism: one clear line, nothing lost.

Most cases run in-process through `kd_tf.main.run_command` (the command line's
own code path after flag parsing); `CommandLineTest` checks the guarantees
only a real process shows (exit status, no traceback, SIGINT).
"""

import contextlib
import errno
import glob
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from kd_tf import atomic, export, main, reporting
from kd_tf.data import packaged
from kd_tf.errors import UserError
from kd_tf.export import writing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SHAPE = (28, 28, 1)
SMALL_RUN = (
    "--epochs=1",
    "--train_examples=256",
    "--validation_examples=256",
    "--batch_size=64",
)


def _snapshot(directory):
    """Map every file under `directory` (hidden ones included) to the SHA-256 of its bytes."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return files


def _tiny_model(num_classes=10, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE_SHAPE, dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1.0 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def _check_images():
    return np.random.default_rng(0).integers(0, 256, (8,) + IMAGE_SHAPE, dtype=np.uint8)


def _save_module(path, fn, spec):
    """A SavedModel with `fn` as its `serving_default` signature."""
    module = tf.Module()
    module.fn = tf.function(fn, input_signature=[spec])
    tf.saved_model.save(module, path, signatures={"serving_default": module.fn})
    return path


def _flip_bytes(path, every=4096):
    with open(path, "r+b") as f:
        raw = bytearray(f.read())
        for i in range(len(raw) // 3, len(raw), every):
            raw[i] ^= 0xFF
        f.seek(0)
        f.write(raw)


def _write_then(error):
    """A stand-in for `writing._write_saved_model` that fails after writing."""
    write = writing._write_saved_model

    def write_then_fail(*args):
        write(*args)
        raise error

    return write_then_fail


def _variables(export_dir):
    """All variables of a SavedModel reloaded from disk: `[(name, numpy value)]`."""
    return [(v.name, v.numpy()) for v in tf.saved_model.load(export_dir).variables]


class _InProcess(tf.test.TestCase):
    """Runs `main.run_command` and checks the one-line contract."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def run_command(self, *argv):
        """Returns `(status, kd_tf lines on stderr, seconds)`."""
        stderr = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stderr(stderr):
            status = main.run_command(
                [*SMALL_RUN, f"--log_dir={self.root}/logs", *argv],
            )
        seconds = time.perf_counter() - started
        lines = [line for line in stderr.getvalue().splitlines() if line.startswith("kd_tf:")]
        self.assertNotIn("Traceback", stderr.getvalue())
        return status, lines, seconds

    def assert_refused(self, argv, status, pattern):
        """`argv` ends with `status`, one line matching `pattern`, within 30 s."""
        got, lines, seconds = self.run_command(*argv)
        self.assertEqual(got, status, lines)
        self.assertLen(lines, 1)
        self.assertRegex(lines[0], pattern)
        self.assertLess(seconds, 30)
        return lines[0]


class BadInputTest(_InProcess):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.teachers = os.path.join(cls.root, "teachers")
        cls.good = export.export_model(
            _tiny_model(), os.path.join(cls.teachers, "good"), check_images=_check_images()
        )
        cls.saved_models = os.path.join(cls.root, "saved_models")
        cls.earlier = export.export_model(
            _tiny_model(seed=1),
            os.path.join(cls.saved_models, "student", "1"),
            check_images=_check_images(),
        )

    def setUp(self):
        super().setUp()
        self.before = _snapshot(self.saved_models)

    def tearDown(self):
        self.assertEqual(_snapshot(self.saved_models), self.before, "earlier exports changed")
        super().tearDown()

    def _teacher(self, name):
        path = os.path.join(self.teachers, name)
        shutil.copytree(self.good, path)
        return path

    def _student(self, teacher_dir, *argv):
        return (
            "--stage=student",
            f"--teacher_dir={teacher_dir}",
            f"--saved_models_dir={self.saved_models}",
            *argv,
        )

    def test_unusable_teacher_dirs(self):
        empty = os.path.join(self.teachers, "empty")
        os.makedirs(empty)
        not_saved_model = os.path.join(self.teachers, "notes")
        os.makedirs(not_saved_model)
        with open(os.path.join(not_saved_model, "README"), "w") as f:
            f.write("not a model")
        truncated_pb = self._teacher("truncated_pb")
        with open(os.path.join(truncated_pb, "saved_model.pb"), "r+b") as f:
            f.truncate(1000)
        corrupt_data = self._teacher("corrupt_data")
        (data_file,) = glob.glob(os.path.join(corrupt_data, "variables", "variables.data-*"))
        _flip_bytes(data_file)
        truncated_data = self._teacher("truncated_data")
        (data_file,) = glob.glob(os.path.join(truncated_data, "variables", "variables.data-*"))
        with open(data_file, "r+b") as f:
            f.truncate(os.path.getsize(data_file) // 2)
        no_variables = self._teacher("no_variables")
        shutil.rmtree(os.path.join(no_variables, "variables"))
        cases = {
            os.path.join(self.teachers, "missing"): "does not exist: pass a SavedModel",
            empty: "holds no saved_model.pb: pass the directory of an export",
            not_saved_model: "holds no saved_model.pb",
            os.path.join(not_saved_model, "README"): "neither a SavedModel directory nor",
            truncated_pb: "could not load .*re-export it or pass another export",
            corrupt_data: "could not load .*DataLossError.*re-export",
            truncated_data: "could not load .*re-export",
            no_variables: "could not load .*re-export",
        }
        for teacher_dir, pattern in cases.items():
            with self.subTest(teacher=os.path.basename(teacher_dir)):
                line = self.assert_refused(self._student(teacher_dir), 2, pattern)
                self.assertStartsWith(line, "kd_tf: error: ")
        line = self.assert_refused(self._student(corrupt_data), 2, "DataLossError")
        self.assertNotIn("{{function_node", line)

    def test_teachers_breaking_the_contract(self):
        images = tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8, name="images")
        float_input = _save_module(
            os.path.join(self.teachers, "float_input"),
            lambda images: {"logits": tf.reduce_mean(images, [1, 2])},
            tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name="images"),
        )
        flat_input = _save_module(
            os.path.join(self.teachers, "flat_input"),
            lambda images: {"logits": tf.zeros([tf.shape(images)[0], 10])},
            tf.TensorSpec([None, 784], tf.uint8, name="images"),
        )
        no_logits = _save_module(
            os.path.join(self.teachers, "no_logits"),
            lambda images: {"scores": tf.zeros([tf.shape(images)[0], 10])},
            images,
        )
        cifar_shape = export.export_model(
            keras.Sequential(
                [
                    keras.Input((32, 32, 3), dtype="uint8"),
                    keras.layers.Flatten(),
                    keras.layers.Dense(10),
                ]
            ),
            os.path.join(self.teachers, "cifar_shape"),
            check_images=np.zeros((2, 32, 32, 3), np.uint8),
        )
        five_classes = export.export_model(
            _tiny_model(num_classes=5),
            os.path.join(self.teachers, "five_classes"),
            check_images=_check_images(),
        )
        lambda_keras = os.path.join(self.teachers, "lambda.keras")
        inputs = keras.Input(IMAGE_SHAPE, dtype="uint8")
        scaled = keras.layers.Lambda(lambda x: keras.ops.cast(x, "float32") / 255.0)(inputs)
        keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(scaled))).save(
            lambda_keras
        )
        cases = {
            float_input: "must take one uint8 input 'images' .*float32.*re-export it",
            flat_input: "must take one uint8 input 'images' \\[batch, H, W, C\\]",
            no_logits: "has no 'logits' output: re-export it",
            cifar_shape: "takes images of shape \\(32, 32, 3\\) but mnist has \\(28, 28, 1\\)",
            five_classes: "predicts 5 classes but mnist has 10: use a teacher trained on",
            lambda_keras: "safe_mode=True .*Lambda.*re-save it without Lambda layers",
        }
        for teacher_dir, pattern in cases.items():
            with self.subTest(teacher=os.path.basename(teacher_dir)):
                self.assert_refused(self._student(teacher_dir), 2, pattern)

    def test_student_without_teacher(self):
        self.assert_refused(
            ("--stage=student", f"--saved_models_dir={self.saved_models}"),
            2,
            "needs a teacher: pass --teacher_dir=DIR",
        )

    def test_flag_values_out_of_range(self):
        cases = {
            "--temperature=0": "--temperature must be > 0",
            "--temperature=-1": "--temperature must be > 0",
            "--alpha=1.5": "--alpha must be in \\[0, 1\\]",
            "--alpha=-0.1": "--alpha must be in \\[0, 1\\]",
            "--epochs=0": "--epochs must be >= 1",
            "--batch_size=0": "--batch_size must be >= 1",
            "--model=resnet9000": "--model=resnet9000: value should be one of",
            "--stage=deploy": "--stage=deploy: value should be one of",
        }
        for argument, pattern in cases.items():
            with self.subTest(argument=argument):
                line = self.assert_refused(
                    (f"--saved_models_dir={self.saved_models}", "--stage=scratch", argument),
                    main.EXIT_BAD_FLAG,
                    pattern,
                )
                self.assertEndsWith(line, "(see --helpfull)")

    def test_occupied_export_dir(self):
        self.assert_refused(
            ("--stage=scratch", f"--export_dir={self.earlier}"),
            2,
            "already holds an export: pass another --export_dir, or --overwrite to replace it",
        )
        notes = os.path.join(self.root, "notes")
        os.makedirs(notes, exist_ok=True)
        with open(os.path.join(notes, "todo.txt"), "w") as f:
            f.write("mine")
        self.assert_refused(
            ("--stage=scratch", f"--export_dir={notes}", "--overwrite"),
            2,
            "is not an export .*so --overwrite will not replace it",
        )
        self.assertEqual(os.listdir(notes), ["todo.txt"])

    def test_corrupt_packaged_mnist_is_refused_before_unpickling(self):
        corrupt = os.path.join(self.root, "mnist.pkl.gz")
        shutil.copyfile(packaged.packaged_mnist_path(), corrupt)
        _flip_bytes(corrupt, every=1 << 20)
        with (
            mock.patch.object(packaged, "packaged_mnist_path", return_value=corrupt),
            mock.patch.object(packaged.pickle, "load", side_effect=AssertionError("unpickled")),
        ):
            self.assert_refused(
                (
                    "--stage=scratch",
                    "--data_source=packaged",
                    f"--saved_models_dir={self.saved_models}",
                ),
                2,
                "is corrupt or not the expected MNIST copy .*reinstall it with",
            )


class TrainingFailureTest(_InProcess):
    def test_diverging_run_exports_nothing(self):
        parent = os.path.join(self.root, "diverged")
        line = self.assert_refused(
            (
                "--stage=scratch",
                "--epochs=3",
                "--learning_rate=1e12",
                "--lr_schedule=constant",
                f"--export_dir={parent}/1",
            ),
            2,
            "training diverged at epoch 1 \\(loss nan at step \\d+\\): lower --learning_rate",
        )
        self.assertIn("nothing was exported", line)
        self.assertFalse(os.path.exists(parent) and os.listdir(parent))

    def test_overwrite_replaces_an_export(self):
        target = export.export_model(
            _tiny_model(), os.path.join(self.root, "replaced", "1"), check_images=_check_images()
        )
        before = _snapshot(target)
        self.assert_refused(("--stage=scratch", f"--export_dir={target}"), 2, "--overwrite")
        full_disk = _write_then(OSError(errno.ENOSPC, "No space left on device"))
        with mock.patch.object(writing, "_write_saved_model", side_effect=full_disk):
            self.assert_refused(
                ("--stage=scratch", f"--export_dir={target}", "--overwrite"),
                2,
                f"could not write {re.escape(target)} \\(No space left on device\\): free",
            )
        self.assertEqual(_snapshot(target), before)
        self.assertEqual(os.listdir(os.path.dirname(target)), ["1"], "no debris")
        status, _, _ = self.run_command("--stage=scratch", f"--export_dir={target}", "--overwrite")
        self.assertEqual(status, 0)
        report = reporting.read_json(os.path.join(target, "assets.extra", "report.json"))
        self.assertEqual((report["stage"], report["model"]), ("scratch", "seed_mlp"))
        served = export.load_serving_model(target)
        self.assertEqual(served.predict_logits(_check_images()).shape, (8, 10))
        self.assertEqual(os.listdir(os.path.dirname(target)), ["1"], "no debris")

    def test_same_seed_gives_bitwise_identical_weights(self):
        # lenet_bn has dropout and batch norm, and --augment draws distortions
        # every step: every seeded random source takes part.
        argv = ("--stage=teacher", "--model=lenet_bn", "--augment", "--epochs=2", "--seed=3")
        exports = [os.path.join(self.root, "reproduced", str(n)) for n in (1, 2)]
        for export_dir in exports:
            self.assertEqual(self.run_command(*argv, f"--export_dir={export_dir}")[0], 0)
        first, second = (_variables(export_dir) for export_dir in exports)
        self.assertGreater(len(first), 10)
        # Names may differ by a uniquifying suffix (seed_generator_1) in one process.
        self.assertLen(second, len(first))
        for (name, a), (_, b) in zip(first, second):
            self.assertTrue(np.array_equal(a, b), name)


class ExportFailureTest(tf.test.TestCase):
    """A failure while exporting never damages the export already in place."""

    def setUp(self):
        super().setUp()
        self.parent = os.path.join(self.get_temp_dir(), "exports")
        self.target = export.export_model(
            _tiny_model(seed=1), os.path.join(self.parent, "1"), check_images=_check_images()
        )
        self.before = _snapshot(self.target)

    def tearDown(self):
        shutil.rmtree(self.parent, ignore_errors=True)
        super().tearDown()

    def _overwrite(self, finalize=None):
        return export.export_model(
            _tiny_model(seed=2),
            self.target,
            check_images=_check_images(),
            finalize=finalize,
            overwrite=True,
        )

    def _assert_untouched(self):
        self.assertEqual(_snapshot(self.target), self.before)
        self.assertEqual(os.listdir(self.parent), ["1"], "no temporary debris")

    def test_failure_in_finalize_or_ctrl_c_keeps_the_old_export(self):
        for error in (ValueError("disk full"), KeyboardInterrupt()):

            def finalize(tmp_dir, served, error=error):
                export.assets_extra_dir(tmp_dir)
                raise error

            with self.subTest(error=type(error).__name__):
                with self.assertRaises(type(error)):
                    self._overwrite(finalize)
                self._assert_untouched()

    def test_full_disk_while_writing_keeps_the_old_export(self):
        for error in (
            OSError(errno.ENOSPC, "No space left on device"),
            tf.errors.ResourceExhaustedError(None, None, "No space left on device"),
        ):
            with (
                self.subTest(error=type(error).__name__),
                mock.patch.object(writing, "_write_saved_model", side_effect=_write_then(error)),
                self.assertRaisesRegex(
                    UserError, "could not write .*No space left on device.*nothing was changed"
                ),
            ):
                self._overwrite()
            self._assert_untouched()

    def test_overwrite_swaps_atomically(self):
        exchanged = []
        swap = atomic._exchange

        def record(a, b):
            exchanged.append((_snapshot(a), _snapshot(b)))
            return swap(a, b)

        with mock.patch.object(atomic, "_exchange", side_effect=record):
            self._overwrite()
        ((new, old),) = exchanged
        self.assertEqual(old, self.before, "the old export stayed until the swap")
        self.assertEqual(_snapshot(self.target), new)
        self.assertNotEqual(new, self.before)
        self.assertEqual(os.listdir(self.parent), ["1"])

    def test_crash_after_the_swap_leaves_the_new_export(self):
        rmtree = shutil.rmtree

        def killed_while_deleting_the_old_export(path, *args, **kwargs):
            if os.path.basename(path).startswith(".1.tmp-"):
                raise OSError("killed")
            return rmtree(path, *args, **kwargs)

        with (
            mock.patch.object(
                atomic.shutil, "rmtree", side_effect=killed_while_deleting_the_old_export
            ),
            self.assertRaisesRegex(OSError, "killed"),
        ):
            self._overwrite()
        export.load_serving_model(self.target)
        self.assertNotEqual(_snapshot(self.target), self.before)
        (leftover,) = [name for name in os.listdir(self.parent) if name != "1"]
        self.assertStartsWith(leftover, ".1.tmp-")
        self.assertEqual(_snapshot(os.path.join(self.parent, leftover)), self.before)

    def test_fallback_without_rename_exchange(self):
        rename = os.rename

        def fail_into_place(src, dst):
            if ".tmp-" in os.path.basename(src):
                raise OSError("rename failed")
            return rename(src, dst)

        with mock.patch.object(atomic, "_exchange", return_value=False):
            with (
                mock.patch.object(atomic.os, "rename", side_effect=fail_into_place),
                self.assertRaisesRegex(OSError, "rename failed"),
            ):
                self._overwrite()
            self._assert_untouched()
            self._overwrite()
        self.assertNotEqual(_snapshot(self.target), self.before)
        self.assertEqual(os.listdir(self.parent), ["1"])


def _cli(*argv):
    return subprocess.Popen(
        [sys.executable, "-m", "kd_tf.main", *argv],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


class CommandLineTest(tf.test.TestCase):
    def _finish(self, process):
        started = time.perf_counter()
        _, stderr = process.communicate(timeout=60)
        return process.returncode, stderr, time.perf_counter() - started

    def test_corrupt_teacher_is_one_line_without_traceback(self):
        root = self.get_temp_dir()
        truncated = os.path.join(root, "teacher")
        export.export_model(_tiny_model(), truncated, check_images=_check_images())
        with open(os.path.join(truncated, "saved_model.pb"), "r+b") as f:
            f.truncate(100)
        process = _cli(
            "--stage=student", f"--teacher_dir={truncated}", f"--saved_models_dir={root}/models"
        )
        returncode, stderr, seconds = self._finish(process)
        self.assertEqual(returncode, 2, stderr[-2000:])
        self.assertLess(seconds, 30)
        self.assertNotIn("Traceback", stderr)
        lines = [line for line in stderr.splitlines() if line.startswith("kd_tf:")]
        self.assertLen(lines, 1)
        self.assertStartsWith(lines[0], f"kd_tf: error: could not load {truncated} (")
        self.assertFalse(os.path.exists(os.path.join(root, "models")))

    def test_ctrl_c_during_training(self):
        root = self.get_temp_dir()
        parent = os.path.join(root, "interrupted")
        process = _cli(
            "--stage=teacher",
            "--model=seed_cnn",
            "--epochs=100",
            "--train_examples=2048",
            "--validation_examples=256",
            f"--export_dir={parent}/1",
            f"--log_dir={root}/logs",
        )
        self.addCleanup(process.kill)
        started = time.perf_counter()
        for line in process.stderr:
            if "training: 100 epochs" in line:
                break
            self.assertLess(time.perf_counter() - started, 60)
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        returncode, stderr, seconds = self._finish(process)
        self.assertEqual(returncode, 130, stderr[-2000:])
        self.assertLess(seconds, 30)
        self.assertNotIn("Traceback", stderr)
        lines = [line for line in stderr.splitlines() if line.startswith("kd_tf:")]
        self.assertEqual(lines, ["kd_tf: interrupted: no partial export was written"])
        self.assertFalse(os.path.exists(parent) and os.listdir(parent))


if __name__ == "__main__":
    tf.test.main()
