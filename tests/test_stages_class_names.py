"""End to end on class folders named as a user names them: the names reach
every export, `predict`, `serving_images` and TFLite, and an image file gets
the same model input through training, `predict`, `serving_images` and TFLite.

The data sets are generated, small and easy (a bright square whose place is
the class, on a dark or a light background), so that a `seed_mlp` trained
for a few epochs classifies them: what is tested is which name a class gets
and which input an image gets, not how well a model learns.
"""

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from kd_tf import command_line, data, export, inference, lite, stages
from kd_tf.errors import ConfigError

ANIMALS = ("Bird", "Cat", "Dog", "Fish")
# Folder names that sort differently as strings ("10" before "2") and as numbers.
NUMBERS = tuple(str(number) for number in range(11))
SIZE = 16
TRAIN_PER_CLASS, TEST_PER_CLASS = 24, 3


def _drawing(rng, place, colour=False, light=False):
    """A 16x16 image: a bright 4x4 square at grid place `place` (of 16) on a
    dark, noisy background; grey, or colour (a random tint); inverted with
    `light` (dark square on a light background)."""
    image = rng.integers(0, 40, (SIZE, SIZE, 3 if colour else 1))
    row, column = divmod(place, 4)
    image[4 * row : 4 * row + 4, 4 * column : 4 * column + 4] = 255
    if colour:
        image = image * rng.uniform(0.6, 1.0, 3)
    image = np.round(image).astype(np.uint8)
    return 255 - image if light else image


def _write_tree(root, names, rng, **drawing):
    """`root/{train,test}/<name>/NN.png`, the class of folder `names[k]` at place k."""
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for place, name in enumerate(names):
            folder = os.path.join(root, split, name)
            os.makedirs(folder)
            for index in range(count):
                image = _drawing(rng, place, light=drawing.get("light_every") and index % 3 == 0,
                                 colour=drawing.get("colour", False))
                tf.io.write_file(os.path.join(folder, f"{index:02d}.png"), tf.io.encode_png(image))
    return root


def _data(data_dir):
    """The flags of the tree at `data_dir`."""
    return ["--data_source=directory", f"--data_dir={data_dir}"]


def _argv(root, data_dir, *argv):
    return [
        *_data(data_dir), "--model=seed_mlp", "--epochs=8",
        "--batch_size=16", "--learning_rate=3e-3", "--validation_examples=16",
        f"--saved_models_dir={root}/saved_models", f"--log_dir={root}/logs", *argv,
    ]


def _run(root, data_dir, *argv):
    return stages.run(command_line.parse(_argv(root, data_dir, *argv)))


def _predict(model_dir, *argv):
    """`(result, printed lines)` of `--stage=predict`."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        result = stages.run(command_line.parse(["--stage=predict", f"--model_dir={model_dir}", *argv]))
    return result, output.getvalue().splitlines()


@pytest.fixture(scope="class")
def animals(request, class_root):
    """Named class folders (`cls.data_dir`), a teacher and a student from it
    (`cls.teacher`, `cls.student`: their reports)."""
    cls = request.cls
    cls.data_dir = _write_tree(os.path.join(class_root, "animals"), ANIMALS, np.random.default_rng(0))
    cls.teacher = _run(class_root, cls.data_dir, "--stage=teacher")
    cls.student = _run(
        class_root, cls.data_dir, "--stage=student", f"--teacher_dir={cls.teacher['export_dir']}"
    )


@pytest.mark.usefixtures("animals")
class NamedClassesTest(tf.test.TestCase):
    def test_every_export_names_the_classes(self):
        for report in (self.teacher, self.student):
            export_dir = report["export_dir"]
            self.assertEqual(report["data"]["class_names"], list(ANIMALS))
            self.assertEqual(export.load_serving_model(export_dir).class_names, ANIMALS)
            self.assertEqual([row["class"] for row in report["per_class"]], list(ANIMALS))
            self.assertTrue(os.path.isfile(os.path.join(export_dir, "assets.extra", "confusion.png")))
        self.assertGreater(self.student["test_accuracy"], 0.9)

    def test_predict_prints_the_folder_name(self):
        folder = os.path.join(self.data_dir, "test", "Cat")
        _, lines = _predict(self.student["export_dir"], f"--images={folder}")
        self.assertLen(lines, TEST_PER_CLASS)
        for line in lines:
            self.assertRegex(line, r" class=Cat top3=Cat:[01]\.\d{3} (Bird|Dog|Fish):")
        _, lines = _predict(self.student["export_dir"], f"--images={folder}", "--print_format=json")
        first = json.loads(lines[0])
        self.assertEqual((first["class"], first["name"]), (1, "Cat"))
        self.assertEqual(first["top"][0], {"class": 1, "name": "Cat", "probability": first["probability"]})
        _, lines = _predict(self.student["export_dir"], "--test_index=3", *_data(self.data_dir))
        self.assertRegex(lines[0], r"^animals_test\[3\] class=Cat .* label=Cat$")

    def test_one_file_through_training_predict_serving_images_and_tflite(self):
        path = os.path.join(self.data_dir, "test", "Dog", "01.png")
        export_dir = self.student["export_dir"]
        splits = data.load_splits(source="directory", data_dir=self.data_dir, validation_examples=16)
        trained_on = splits.test.take([2 * TEST_PER_CLASS + 1])  # Dog's second test file
        recorded = inference.model_preprocessing(export_dir, (SIZE, SIZE, 1))
        self.assertAllEqual(inference.load_images([path], recorded), trained_on)

        loaded = tf.saved_model.load(export_dir)
        served = loaded.signatures["serving_default"](images=tf.constant(trained_on))
        from_file = loaded.signatures["serving_images"](image_bytes=tf.io.read_file(path)[None])
        self.assertEqual(set(from_file), {"logits", "probabilities", "classes", "class_names"})
        for key in served:  # the same graph on the same input: bitwise equal
            self.assertAllEqual(from_file[key], served[key])
        self.assertEqual(served["class_names"].numpy()[0], b"Dog")
        # A file of another size: serving_images preprocesses it as predict does.
        wide = tf.io.encode_png(tf.cast(tf.image.resize(trained_on[0], (24, 40)), tf.uint8))
        from_wide = loaded.signatures["serving_images"](image_bytes=wide[None])
        wide_path = os.path.join(self.root, "wide.png")
        tf.io.write_file(wide_path, wide)
        as_predict = loaded.signatures["serving_default"](
            images=tf.constant(inference.load_images([wide_path], recorded))
        )
        for key in as_predict:
            self.assertAllEqual(from_wide[key], as_predict[key])

        tflite = os.path.join(self.root, "student.tflite")
        lite.export_tflite(export.load_serving_model(export_dir), tflite, "none", splits)
        with open(lite.labels_path(tflite), encoding="utf-8") as f:
            self.assertEqual(f.read().splitlines(), list(ANIMALS))
        with open(tflite, "rb") as f:
            content = f.read()
        # TFLite's float kernels (XNNPACK) sum in another order than
        # TensorFlow's: the logits agree to float32 rounding, not bitwise.
        self.assertAllClose(lite.tflite_logits(content, trained_on), served["logits"], atol=1e-4)

    def test_a_teacher_naming_the_classes_otherwise_is_refused_before_training(self):
        teacher = os.path.join(self.root, "reordered_teacher")
        shutil.copytree(self.teacher["export_dir"], teacher)
        with open(os.path.join(teacher, "assets", "labels.txt"), "w") as f:
            f.write("Cat\nBird\nDog\nFish\n")
        with self.assertRaises(ConfigError) as caught:
            _run(self.root, self.data_dir, "--stage=student", f"--teacher_dir={teacher}",
                 f"--export_dir={self.root}/never")
        message = command_line.describe(caught.exception)
        self.assertIn("names its classes in another order than animals: class 0 is 'Cat' there, "
                      "'Bird' here", message)
        self.assertIn("pass --teacher_class_order=1,0,2,3 to read its outputs in the data's order, "
                      "or another --teacher_dir", message)
        self.assertNotIn("\n", message)
        self.assertFalse(os.path.exists(os.path.join(self.root, "never")))
        # Read in that order, the teacher names the classes as the data does.
        report = _run(self.root, self.data_dir, "--stage=student", f"--teacher_dir={teacher}",
                      "--teacher_class_order=1,0,2,3", "--epochs=1")
        self.assertEqual(report["data"]["class_names"], list(ANIMALS))


@pytest.mark.usefixtures("class_root")
class IntegerFoldersTest(tf.test.TestCase):
    def test_folder_2_is_class_2(self):
        data_dir = _write_tree(os.path.join(self.root, "numbers"), NUMBERS, np.random.default_rng(1))
        report = _run(self.root, data_dir, "--stage=teacher")
        self.assertEqual(report["data"]["class_names"], list(NUMBERS))
        _, lines = _predict(report["export_dir"], f"--images={data_dir}/test/2")
        for line in lines:
            self.assertRegex(line, r" class=2 top3=2:")


@pytest.mark.usefixtures("class_root")
class MixedBackgroundsTest(tf.test.TestCase):
    def test_a_file_gets_the_class_its_test_image_gets(self):
        # Colour drawings, one in three on a light background: no image may
        # be inverted, so predicting a test file gives what --test_index gives.
        data_dir = _write_tree(
            os.path.join(self.root, "mixed"), ANIMALS, np.random.default_rng(2), colour=True,
            light_every=True,
        )
        report = _run(self.root, data_dir, "--stage=teacher")
        self.assertFalse(report["preprocessing"]["invert_clearly_opposite"])
        count = len(ANIMALS) * TEST_PER_CLASS
        indices = ",".join(str(i) for i in range(count))
        _, by_index = _predict(report["export_dir"], f"--test_index={indices}", *_data(data_dir))
        files = ",".join(
            os.path.join(data_dir, "test", name, f"{index:02d}.png")
            for name in ANIMALS for index in range(TEST_PER_CLASS)
        )
        _, by_file = _predict(report["export_dir"], f"--images={files}")
        self.assertEqual(
            [line.split(" ", 1)[1].rsplit(" label=", 1)[0] for line in by_index],
            [line.split(" ", 1)[1] for line in by_file],
        )
