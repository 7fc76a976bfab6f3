"""kd_tf.inference: image files converted to model input, and finding them
(no model; files made from MNIST test digits)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from kd_tf import inference


@pytest.mark.usefixtures("digit_files")
class ImageFilesTest(tf.test.TestCase):
    def test_conversion_restores_the_digits(self):
        paths = [os.path.join(self.images_dir, name) for name in sorted(self.files)]
        converted = inference.load_images(paths, (28, 28, 1))
        self.assertEqual(converted.dtype, np.uint8)
        self.assertEqual(converted.shape, (len(paths), 28, 28, 1))
        for path, image in zip(paths, converted):
            original = self.test.images[self.files[os.path.basename(path)]].astype(float)
            error = np.mean(np.abs(image.astype(float) - original))
            with self.subTest(path=os.path.basename(path)):
                self.assertLess(error, 0.5 if "plain" in path or path.endswith("rgb.png") else 8)
        rgb = inference.load_images(paths[:1], (28, 28, 3))
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
        converted = inference.convert_image(image, (28, 28, 1))
        self.assertEqual(converted.shape, (28, 28, 1))
        self.assertAllEqual(converted[:7], np.zeros((7, 28, 1)))
        self.assertAllEqual(converted[-7:], np.zeros((7, 28, 1)))
        self.assertGreater(converted[14, 14, 0], 200)
        self.assertLess(converted[14, 1, 0], 50)
