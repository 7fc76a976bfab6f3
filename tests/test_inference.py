"""kd_tf.inference and kd_tf.preprocessing without a model: image files
turned into model input exactly as the training pipeline turns them, finding
them, and the preprocessing an export's report records."""

import json
import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kd_tf import data, inference, preprocessing
from kd_tf.data import images as images_lib

DRAWINGS = preprocessing.Preprocessing((28, 28, 1), "dark", invert=True)


def _write(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(image))
    return path


@pytest.mark.usefixtures("digit_files")
class ImageFilesTest(tf.test.TestCase):
    def test_conversion_restores_the_digits(self):
        paths = [os.path.join(self.images_dir, name) for name in sorted(self.files)]
        converted = inference.load_images(paths, DRAWINGS)
        self.assertEqual(converted.dtype, np.uint8)
        self.assertEqual(converted.shape, (len(paths), 28, 28, 1))
        for path, image in zip(paths, converted):
            original = self.test.images[self.files[os.path.basename(path)]]
            with self.subTest(path=os.path.basename(path)):
                if "plain" in path or path.endswith("rgb.png"):
                    self.assertAllEqual(image, original)
                else:  # resized up and back, a JPEG's loss
                    self.assertLess(np.mean(np.abs(image.astype(float) - original)), 8)
        rgb = inference.load_images(paths[:1], preprocessing.Preprocessing((28, 28, 3)))
        self.assertEqual(rgb.shape, (1, 28, 28, 3))
        self.assertAllEqual(rgb[0, ..., 0], rgb[0, ..., 2])

    def test_find_images(self):
        glob_paths = inference.find_images(os.path.join(self.images_dir, "plain*.png"))
        self.assertEqual(
            [os.path.basename(p) for p in glob_paths], [f"plain{i}.png" for i in range(4)]
        )
        rgb = os.path.join(self.images_dir, "rgb.png")
        combined = inference.find_images(f"{rgb},{self.images_dir}")
        self.assertEqual(combined[0], rgb)
        self.assertLen(combined, len(self.files))

    def test_bmp_and_gif_files_are_listed_and_read_as_the_png(self):
        folder = tempfile.mkdtemp()
        digit = self.test.images[0]
        for extension in ("png", "bmp", "gif", "BMP"):
            Image.fromarray(digit[..., 0]).save(os.path.join(folder, f"digit.{extension}"),
                                                format="BMP" if extension == "BMP" else None)
        found = inference.find_images(folder)
        self.assertEqual([os.path.basename(path) for path in found],
                         ["digit.BMP", "digit.bmp", "digit.gif", "digit.png"])
        for image in inference.load_images(found, DRAWINGS):
            self.assertAllEqual(image, digit)


class PreprocessingTest(tf.test.TestCase):
    def test_a_32x16_image_gets_the_input_training_gave_it(self):
        # A tree whose images differ in size, trained at --image_size=16,16:
        # training stretches every image to 16x16, and so must predict (it
        # letterboxed them, up to 223 grey levels away on this image).
        root = tempfile.mkdtemp()
        rng = np.random.default_rng(0)
        for split, count in (("train", 3), ("test", 1)):
            for name in ("a", "b"):
                for index in range(count):
                    image = rng.integers(0, 60, (20 + 4 * index, 12 + 2 * index, 1))
                    image[5:10, 3:8] = 255
                    _write(os.path.join(root, split, name, f"{index}.png"), image.astype(np.uint8))
        wide = np.zeros((16, 32, 1), np.uint8)
        wide[4:12, 8:24] = 255
        wide_path = _write(os.path.join(root, "test", "a", "0.png"), wide)
        splits = data.load_splits(
            source="directory", data_dir=root, image_size=(16, 16), validation_examples=1
        )
        trained_on = splits.test.take([0])
        predicted_on = inference.load_images(
            [wide_path], preprocessing.Preprocessing.for_splits(splits)
        )
        self.assertEqual(predicted_on.shape, (1, 16, 16, 1))
        self.assertAllEqual(predicted_on, trained_on)
        self.assertAllEqual(trained_on[0, 4:12, 8, 0], np.full(8, 255, np.uint8))  # stretched

    def test_only_drawings_clearly_of_the_other_background_are_inverted(self):
        light = np.full((10, 40, 1), 255, np.uint8)  # dark ink on light paper
        light[3:7, 5:35] = 0
        grey = np.full((10, 40, 1), 150, np.uint8)  # a frame at 150: not clearly light
        grey[3:7, 5:35] = 0
        cases = (  # (image, preprocessing, inverted)
            (light, DRAWINGS, True),
            (255 - light, DRAWINGS, False),
            (grey, DRAWINGS, False),
            (light, preprocessing.Preprocessing((28, 28, 1), "light", invert=True), False),
            (255 - light, preprocessing.Preprocessing((28, 28, 1), "light", invert=True), True),
            (light, preprocessing.Preprocessing((28, 28, 1), "dark", invert=False), False),
        )
        for image, recorded, expected in cases:
            with self.subTest(frame=int(image[0, 0, 0]), recorded=recorded):
                prepared, inverted = preprocessing.prepare(np.tile(image, (1, 1, 3)), recorded)
                as_is = images_lib.resized(np.tile(image, (1, 1, 3)), (28, 28))[..., :1]
                self.assertEqual(bool(inverted), expected)
                self.assertAllEqual(prepared, 255 - as_is if expected else as_is)

    def test_a_drawing_on_a_transparent_canvas_becomes_the_digit(self):
        # A black stroke whose opacity is the MNIST digit: composited onto
        # white (the stroke is dark), then inverted for a dark-background
        # model of drawings, it is the digit again (it was all zeros).
        digit = data.read_packaged_mnist()[1].images[0]
        stroke = np.concatenate([np.zeros((28, 28, 3), np.uint8), digit], axis=-1)
        path = _write(os.path.join(tempfile.mkdtemp(), "stroke.png"), stroke)
        self.assertAllEqual(inference.load_images([path], DRAWINGS)[0], digit)
        white_stroke = np.concatenate([np.full((28, 28, 3), 255, np.uint8), digit], axis=-1)
        self.assertAllEqual(images_lib.decode(tf.io.encode_png(white_stroke))[..., :1], digit)
        opaque = np.concatenate([np.tile(digit, (1, 1, 3)), np.full_like(digit, 255)], axis=-1)
        self.assertAllEqual(images_lib.decode(tf.io.encode_png(opaque))[..., :1], digit)


class ModelPreprocessingTest(tf.test.TestCase):
    def _export_with_report(self, report):
        model_dir = tempfile.mkdtemp()
        if report is not None:
            os.makedirs(os.path.join(model_dir, "assets.extra"))
            with open(os.path.join(model_dir, "assets.extra", "report.json"), "w") as f:
                f.write(report)
        return model_dir

    def test_the_recorded_preprocessing(self):
        recorded = preprocessing.Preprocessing((28, 28, 1), "light", invert=True)
        report = json.dumps({"preprocessing": recorded.as_json()})
        model_dir = self._export_with_report(report)
        self.assertEqual(inference.model_preprocessing(model_dir, (28, 28, 1)), recorded)
        older = json.dumps({"data": {"background": "light"}})
        for shape, invert in (((28, 28, 1), True), ((28, 28, 3), False)):
            self.assertEqual(
                inference.model_preprocessing(self._export_with_report(older), shape),
                preprocessing.Preprocessing(shape, "light", invert),
            )

    def test_no_record_means_no_inversion_and_is_logged(self):
        cases = {
            "no report": self._export_with_report(None),
            "a report without it": self._export_with_report(json.dumps({"data": {"dataset": "d"}})),
            "another value": self._export_with_report(json.dumps({"data": {"background": "grey"}})),
            "not JSON": self._export_with_report("{"),
            ".keras file": os.path.join(tempfile.mkdtemp(), "model.keras"),
        }
        open(cases[".keras file"], "w").close()
        for case, model_dir in cases.items():
            with self.subTest(case=case), self.assertLogs("absl", "WARNING") as logged:
                recorded = inference.model_preprocessing(model_dir, (28, 28, 1))
            self.assertFalse(recorded.invert)
            self.assertIn("not inverted", logged.output[0])
