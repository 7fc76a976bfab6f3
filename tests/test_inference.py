"""kd_tf.inference: image files converted to model input, and finding them
(no model; files made from MNIST test digits), and the background a model's
report records."""

import json
import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from kd_tf import inference


@pytest.mark.usefixtures("digit_files")
class ImageFilesTest(tf.test.TestCase):
    def test_conversion_restores_the_digits(self):
        paths = [os.path.join(self.images_dir, name) for name in sorted(self.files)]
        converted = inference.load_images(paths, (28, 28, 1), "dark")
        self.assertEqual(converted.dtype, np.uint8)
        self.assertEqual(converted.shape, (len(paths), 28, 28, 1))
        for path, image in zip(paths, converted):
            original = self.test.images[self.files[os.path.basename(path)]].astype(float)
            error = np.mean(np.abs(image.astype(float) - original))
            with self.subTest(path=os.path.basename(path)):
                self.assertLess(error, 0.5 if "plain" in path or path.endswith("rgb.png") else 8)
        rgb = inference.load_images(paths[:1], (28, 28, 3), "dark")
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


class ConvertImageTest(tf.test.TestCase):
    def test_wide_dark_on_light_image_is_inverted_and_padded(self):
        image = np.full((10, 40, 1), 255, np.uint8)
        image[3:7, 5:35] = 0
        converted = inference.convert_image(image, (28, 28, 1), "dark")
        self.assertEqual(converted.shape, (28, 28, 1))
        self.assertAllEqual(converted[:7], np.zeros((7, 28, 1)))
        self.assertAllEqual(converted[-7:], np.zeros((7, 28, 1)))
        self.assertGreater(converted[14, 14, 0], 200)
        self.assertLess(converted[14, 1, 0], 50)

    def test_only_an_image_whose_background_is_unlike_the_models_is_inverted(self):
        light = np.full((10, 40, 1), 255, np.uint8)  # dark ink on light paper
        light[3:7, 5:35] = 0
        dark = 255 - light  # light ink on a dark background, as MNIST
        cases = (  # (image, model's background, inverted)
            (light, "light", False),
            (light, "dark", True),
            (light, None, False),
            (dark, "dark", False),
            (dark, "light", True),
            (dark, None, False),
        )
        for image, background, inverted in cases:
            with self.subTest(image_background=int(image[0, 0, 0]), model=background):
                converted = inference.convert_image(image, (28, 28, 1), background)
                ink, paper = converted[14, 14, 0], converted[14, 1, 0]
                ink_is_light = (image[5, 20, 0] == 255) != inverted
                self.assertEqual((ink > 200, paper < 50), (ink_is_light, ink_is_light))
                self.assertEqual((ink < 50, paper > 200), (not ink_is_light, not ink_is_light))
                self.assertAllEqual(converted[:7], np.zeros((7, 28, 1)))


class ModelBackgroundTest(tf.test.TestCase):
    def _export_with_report(self, report):
        model_dir = tempfile.mkdtemp()
        if report is not None:
            os.makedirs(os.path.join(model_dir, "assets.extra"))
            with open(os.path.join(model_dir, "assets.extra", "report.json"), "w") as f:
                f.write(report)
        return model_dir

    def test_the_recorded_background(self):
        for background in ("dark", "light"):
            report = json.dumps({"data": {"dataset": "d", "background": background}})
            self.assertEqual(inference.model_background(self._export_with_report(report)), background)

    def test_no_record_means_none_and_is_logged(self):
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
                self.assertIsNone(inference.model_background(model_dir))
            self.assertIn("the images are not inverted", logged.output[0])
