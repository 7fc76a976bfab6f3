"""End to end: `--stage=predict` classifies image files and test images with
the session's teacher export (real MNIST)."""

import contextlib
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from kd_tf import command_line, export, inference, preprocessing, stages
from kd_tf.errors import ConfigError, UserError

LINE = re.compile(
    r"^(\S+) class=(\d) top3=(\d):([01]\.\d{3}) (\d):([01]\.\d{3}) (\d):([01]\.\d{3})$"
)


@pytest.fixture(scope="class")
def served(request, class_teacher):
    """The session's teacher: `cls.model_dir`, and `cls.served` loaded from it."""
    request.cls.model_dir = class_teacher.export_dir
    request.cls.served = export.load_serving_model(class_teacher.export_dir)


@pytest.mark.usefixtures("served", "digit_files")
class PredictStageTest(tf.test.TestCase):
    def _predict(self, *argv):
        settings = command_line.parse(["--stage=predict", f"--model_dir={self.model_dir}", *argv])
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            result = stages.run(settings)
        return result, output.getvalue().splitlines()

    def test_files_get_the_classes_of_the_original_digits(self):
        grid = os.path.join(self.root, "grid.png")
        result, lines = self._predict(f"--images={self.images_dir}", f"--output_image={grid}")
        names = sorted(self.files)
        self.assertEqual(result["names"], [os.path.join(self.images_dir, n) for n in names])
        indices = [self.files[name] for name in names]
        expected = np.argmax(self.served.predict_logits(self.test.images[indices]), axis=1)
        predicted = [p.label for p in result["predictions"]]
        self.assertAllEqual(predicted, expected)
        self.assertGreaterEqual(np.sum(np.array(predicted) == self.test.labels[indices]), 6)

        self.assertLen(lines, len(names))
        for line, name, prediction in zip(lines, names, result["predictions"]):
            match = LINE.match(line)
            self.assertIsNotNone(match, line)
            self.assertEqual(match.group(1), os.path.join(self.images_dir, name))
            self.assertEqual(int(match.group(2)), prediction.label)
            self.assertEqual(int(match.group(3)), prediction.label)
            probabilities = [float(match.group(g)) for g in (4, 6, 8)]
            self.assertEqual(probabilities, sorted(probabilities, reverse=True))

        picture = tf.io.decode_png(tf.io.read_file(grid))
        self.assertGreater(picture.shape[0], 100)
        self.assertGreater(picture.shape[1], 400)

    def test_test_index_shows_true_labels(self):
        grid = os.path.join(self.root, "test_grid.png")
        result, lines = self._predict("--test_index=3,0,9", f"--output_image={grid}")
        expected = np.argmax(self.served.predict_logits(self.test.images[[3, 0, 9]]), axis=1)
        self.assertAllEqual([p.label for p in result["predictions"]], expected)
        for line, index in zip(lines, (3, 0, 9)):
            self.assertStartsWith(line, f"mnist_test[{index}] class=")
            self.assertEndsWith(line, f" label={self.test.labels[index]}")
        self.assertTrue(os.path.isfile(grid))

    def test_user_mistakes(self):
        cases = {
            (f"--images={self.root}/missing.png",): "does not exist",
            (f"--images={self.root}/*.jpeg",): "matches no image file",
            (f"--images={self.images_dir}/notes.txt",): "cannot read",
            (f"--images={self.images_dir}", "--test_index=1"): "either --images",
            (): "either --images",
            ("--test_index=10000",): "out of range",
        }
        for argv, message in cases.items():
            with self.subTest(argv=argv):
                with self.assertRaises(UserError) as caught:
                    self._predict(*argv)
                self.assertRegex(command_line.describe(caught.exception), message)
        with self.assertRaisesRegex(UserError, "needs model_dir=DIR") as caught:
            stages.run(command_line.parse(["--stage=predict", "--test_index=1"]))
        self.assertIn("--stage=predict needs --model_dir=DIR", command_line.describe(caught.exception))
        for value in ("-1", "", "1,x"):
            with (
                self.subTest(test_index=value),
                self.assertRaises((flags.Error, ConfigError)) as caught,
            ):
                command_line.parse(["--stage=predict", f"--test_index={value}"])
            self.assertIn("--test_index must be", command_line.describe(caught.exception))


@pytest.mark.usefixtures("served", "digit_files")
class PolarityTest(tf.test.TestCase):
    """The teacher's export as it is (its report says "dark", as MNIST is),
    with its report saying "light", and with no report (a foreign export)."""

    def _copy(self, name, background):
        model_dir = os.path.join(self.root, name)
        shutil.copytree(self.model_dir, model_dir)
        report_path = os.path.join(model_dir, "assets.extra", "report.json")
        if background is None:
            os.remove(report_path)
            return model_dir
        with open(report_path) as f:
            report = json.load(f)
        report["preprocessing"]["background"] = background
        with open(report_path, "w") as f:
            json.dump(report, f)
        return model_dir

    def _predictions(self, model_dir, path):
        settings = command_line.parse(["--stage=predict", f"--model_dir={model_dir}", f"--images={path}"])
        with contextlib.redirect_stdout(io.StringIO()):
            return stages.run(settings)["predictions"]

    def _as_is_and_inverted(self, path):
        """The model's predictions on the file at `path` resized but not
        inverted, and on that input inverted."""
        images = inference.load_images([path], preprocessing.Preprocessing((28, 28, 1)))
        return inference.predict(self.served, images), inference.predict(self.served, 255 - images)

    def test_an_image_is_inverted_only_for_a_model_of_the_other_background(self):
        with open(os.path.join(self.model_dir, "assets.extra", "report.json")) as f:
            recorded = json.load(f)["preprocessing"]
        self.assertEqual((recorded["background"], recorded["invert_clearly_opposite"]), ("dark", True))
        models = {"dark": self.model_dir, "light": self._copy("light", "light")}
        with self.assertLogs("absl", "WARNING") as logged:
            models[None] = self._copy("foreign", None)
            self._predictions(models[None], os.path.join(self.images_dir, "plain0.png"))
        self.assertIn("not inverted", "\n".join(logged.output))
        for name in ("inverted_large.png", "plain0.png"):
            path = os.path.join(self.images_dir, name)
            image = tf.io.decode_png(tf.io.read_file(path), channels=1)
            light = bool(np.mean(image[0]) > 127.5)
            as_is, inverted = self._as_is_and_inverted(path)
            self.assertNotEqual(as_is, inverted)
            for background, model_dir in models.items():
                with self.subTest(image=name, model=background):
                    invert = background is not None and (background == "light") != light
                    self.assertEqual(self._predictions(model_dir, path), inverted if invert else as_is)
