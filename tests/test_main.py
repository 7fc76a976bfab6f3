"""kd_tf.main: bad input is refused with one line and an exit status, before
any training, and leaves earlier exports as they were.

`BadInputTest` runs `main.run_command` in process (the command line's own
code path after flag parsing) on synthetic teachers; `ProcessTest` checks
what only a real `python -m kd_tf.main` process shows (exit status, no
traceback). The failures that happen during training (divergence, Ctrl-C, a
killed run) are in tests/test_stages_failures.py.
"""

import glob
import os
import shutil
from unittest import mock

import helpers
import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import export, main
from kd_tf.data import packaged

IMAGE_SHAPE = helpers.IMAGE_SHAPE


def _flip_bytes(path, every=4096):
    with open(path, "r+b") as f:
        raw = bytearray(f.read())
        for i in range(len(raw) // 3, len(raw), every):
            raw[i] ^= 0xFF
        f.seek(0)
        f.write(raw)


@pytest.fixture(scope="class")
def exports(request, class_root):
    """A good synthetic teacher (`cls.good`) and an earlier student export in
    `cls.saved_models` that no refusal may touch."""
    cls = request.cls
    cls.teachers = os.path.join(class_root, "teachers")
    cls.good = export.export_model(
        helpers.tiny_model(),
        os.path.join(cls.teachers, "good"),
        check_images=helpers.random_images(8),
    )
    cls.saved_models = os.path.join(class_root, "saved_models")
    cls.earlier = export.export_model(
        helpers.tiny_model(seed=1),
        os.path.join(cls.saved_models, "student", "1"),
        check_images=helpers.random_images(8),
    )


@pytest.mark.usefixtures("exports")
class BadInputTest(helpers.CommandTestCase):
    def setUp(self):
        super().setUp()
        self.before = helpers.snapshot(self.saved_models)

    def tearDown(self):
        after = helpers.snapshot(self.saved_models)
        self.assertEqual(after, self.before, "earlier exports changed")
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
        # A float input is a teacher's right (--teacher_pixel_range); an integer
        # type other than uint8 is not.
        int_input = helpers.save_module(
            os.path.join(self.teachers, "int_input"),
            lambda images: {"logits": tf.cast(tf.reduce_mean(images, [1, 2]), tf.float32)},
            tf.TensorSpec([None, *IMAGE_SHAPE], tf.int32, name="images"),
        )
        flat_input = helpers.save_module(
            os.path.join(self.teachers, "flat_input"),
            lambda images: {"logits": tf.zeros([tf.shape(images)[0], 10])},
            tf.TensorSpec([None, 784], tf.uint8, name="images"),
        )
        no_logits = helpers.save_module(
            os.path.join(self.teachers, "no_logits"),
            lambda images: {"scores": tf.zeros([tf.shape(images)[0], 10])},
            images,
        )
        # Another size, or 3 channels for 1, is converted (tests/test_teacher_adapter.py);
        # 4 channels cannot be made from 1.
        four_channels = export.export_model(
            keras.Sequential(
                [
                    keras.Input((32, 32, 4), dtype="uint8"),
                    keras.layers.Flatten(),
                    keras.layers.Dense(10),
                ]
            ),
            os.path.join(self.teachers, "four_channels"),
            check_images=np.zeros((2, 32, 32, 4), np.uint8),
        )
        five_classes = export.export_model(
            helpers.tiny_model(num_classes=5),
            os.path.join(self.teachers, "five_classes"),
            check_images=helpers.random_images(8),
        )
        lambda_keras = os.path.join(self.teachers, "lambda.keras")
        inputs = keras.Input(IMAGE_SHAPE, dtype="uint8")
        scaled = keras.layers.Lambda(lambda x: keras.ops.cast(x, "float32") / 255.0)(inputs)
        keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(scaled))).save(
            lambda_keras
        )
        cases = {
            int_input: "must take one uint8 or float input 'images' .*int32.*re-export it",
            flat_input: "must take one uint8 or float input 'images' \\[batch, H, W, C\\]",
            no_logits: "has no 'logits' output: re-export it",
            four_channels: "takes images of 4 channels but the data set's have 1: pass a teacher",
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
            "--model=resnet9000": "--model=resnet9000: --model must be a registered model "
            "\\(lenet_bn, .*mobilenet_small\\) or the path of a .keras file",
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


@pytest.mark.slow
class ProcessTest(tf.test.TestCase):
    """Real `python -m kd_tf.main` processes that stop before any training."""

    def test_bad_flag_values_are_rejected(self):
        # One value refused when absl parses the flags, one when the config is built.
        cases = {
            "--stage=deploy": "--stage=deploy: value should be one of",
            "--temperature=0": "--temperature must be > 0",
        }
        results = helpers.run_kd_tf(*(["--stage=student", argument] for argument in cases))
        for (argument, message), (status, _, stderr) in zip(cases.items(), results):
            with self.subTest(command_line=argument):
                self.assertEqual(status, main.EXIT_BAD_FLAG, stderr[-2000:])
                self.assertIn(message, stderr)
                self.assertNotIn("Traceback", stderr)

    def test_helpfull_lists_the_models(self):
        ((_, stdout, _),) = helpers.run_kd_tf(["--helpfull"])
        for name in ("lenet_bn", "seed_cnn", "seed_mlp", "compact_cnn"):
            self.assertIn(name, stdout)

    def test_corrupt_teacher_is_one_line_without_traceback(self):
        root = self.get_temp_dir()
        truncated = os.path.join(root, "teacher")
        export.export_model(helpers.tiny_model(), truncated, check_images=helpers.random_images(8))
        with open(os.path.join(truncated, "saved_model.pb"), "r+b") as f:
            f.truncate(100)
        ((status, _, stderr),) = helpers.run_kd_tf(
            ["--stage=student", f"--teacher_dir={truncated}", f"--saved_models_dir={root}/models"]
        )
        self.assertEqual(status, 2, stderr[-2000:])
        self.assertNotIn("Traceback", stderr)
        lines = helpers.kd_tf_lines(stderr)
        self.assertLen(lines, 1)
        self.assertStartsWith(lines[0], f"kd_tf: error: could not load {truncated} (")
        self.assertFalse(os.path.exists(os.path.join(root, "models")))
