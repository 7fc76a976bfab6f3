"""The predict stage: image files and test images through a real export."""

import contextlib
import io
import os
import re
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from absl import flags

from kd_tf import command_line, data, export, inference, stages
from kd_tf.errors import ConfigError, UserError

LINE = re.compile(
    r"^(\S+) class=(\d) top3=(\d):([01]\.\d{3}) (\d):([01]\.\d{3}) (\d):([01]\.\d{3})$"
)


def _write_png(path, image):
    tf.io.write_file(path, tf.io.encode_png(tf.cast(image, tf.uint8)))


class PredictTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()
        cls.model_dir = stages.run(
            command_line.parse(
                [
                    "--stage=scratch",
                    "--epochs=2",
                    "--train_examples=2048",
                    "--validation_examples=256",
                    "--batch_size=64",
                    f"--export_dir={cls.root}/model",
                    f"--log_dir={cls.root}/logs",
                ]
            )
        )["export_dir"]
        cls.served = export.load_serving_model(cls.model_dir)
        cls.test = data.read_packaged_mnist()[1]
        cls.images_dir = os.path.join(cls.root, "images")
        os.makedirs(cls.images_dir)
        digits = cls.test.images[:8]
        # name -> index of the test digit it holds.
        cls.files = {}
        for i in range(4):
            cls.files[f"plain{i}.png"] = i
            _write_png(os.path.join(cls.images_dir, f"plain{i}.png"), digits[i])
        dark_on_light = tf.image.resize(255.0 - digits[4], (112, 112))
        _write_png(os.path.join(cls.images_dir, "inverted_large.png"), tf.round(dark_on_light))
        cls.files["inverted_large.png"] = 4
        _write_png(os.path.join(cls.images_dir, "rgb.png"), np.tile(digits[5], (1, 1, 3)))
        cls.files["rgb.png"] = 5
        rgb_large = tf.image.resize(np.tile(digits[6], (1, 1, 3)), (84, 84))
        tf.io.write_file(
            os.path.join(cls.images_dir, "rgb_large.jpg"),
            tf.io.encode_jpeg(tf.cast(tf.round(rgb_large), tf.uint8), quality=95),
        )
        cls.files["rgb_large.jpg"] = 6
        with open(os.path.join(cls.images_dir, "notes.txt"), "w") as f:
            f.write("not an image")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root)
        super().tearDownClass()

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

    def test_wide_dark_on_light_image_is_inverted_and_padded(self):
        image = np.full((10, 40, 1), 255, np.uint8)
        image[3:7, 5:35] = 0
        converted = inference.convert_image(image, (28, 28, 1))
        self.assertEqual(converted.shape, (28, 28, 1))
        self.assertAllEqual(converted[:7], np.zeros((7, 28, 1)))
        self.assertAllEqual(converted[-7:], np.zeros((7, 28, 1)))
        self.assertGreater(converted[14, 14, 0], 200)
        self.assertLess(converted[14, 1, 0], 50)

    def test_test_index_shows_true_labels(self):
        grid = os.path.join(self.root, "test_grid.png")
        result, lines = self._predict("--test_index=3,0,9", f"--output_image={grid}")
        expected = np.argmax(self.served.predict_logits(self.test.images[[3, 0, 9]]), axis=1)
        self.assertAllEqual([p.label for p in result["predictions"]], expected)
        for line, index in zip(lines, (3, 0, 9)):
            self.assertStartsWith(line, f"mnist_test[{index}] class=")
            self.assertEndsWith(line, f" label={self.test.labels[index]}")
        self.assertTrue(os.path.isfile(grid))

    def test_find_images(self):
        glob_paths = inference.find_images(os.path.join(self.images_dir, "plain*.png"))
        self.assertEqual(
            [os.path.basename(p) for p in glob_paths], [f"plain{i}.png" for i in range(4)]
        )
        rgb = os.path.join(self.images_dir, "rgb.png")
        combined = inference.find_images(f"{rgb},{self.images_dir}")
        self.assertEqual(combined[0], rgb)
        self.assertLen(combined, len(self.files))

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


if __name__ == "__main__":
    tf.test.main()
