"""End to end: `--stage=tflite` converts the session's teacher export and runs
it in the TFLite interpreter over the real MNIST test split."""

import os

import numpy as np
import pytest
import tensorflow as tf

from kd_tf import command_line, data, export, lite, reporting, stages
from kd_tf.errors import UserError

REPORT_KEYS = {
    "model_dir",
    "tflite_path",
    "labels_path",
    "quantize",
    "test_examples",
    "saved_model",
    "tflite",
    "accuracy_drop_points",
    "parity_points",
    "within_parity",
    "same_class_fraction",
    "representative_examples",
}


@pytest.fixture(scope="class")
def model(request, class_root, class_teacher):
    """The session's teacher as `cls.model_dir` (an MLP: the interpreter's
    passes over the 10,000 test images stay cheap; trained to about 80 %, it
    keeps int8 within half a point), and the test split as `cls.test`."""
    request.cls.model_dir = class_teacher.export_dir
    request.cls.test = data.read_packaged_mnist()[1]


@pytest.mark.usefixtures("model")
class TFLiteStageTest(tf.test.TestCase):
    # The slice whose training images calibrate int8 (--train_examples).
    COMMON = ("--train_examples=2048", "--validation_examples=256")

    def _convert(self, quantize):
        path = os.path.join(self.root, f"model_{quantize}.tflite")
        report = stages.run(
            command_line.parse(
                [
                    "--stage=tflite",
                    f"--model_dir={self.model_dir}",
                    f"--tflite_path={path}",
                    f"--quantize={quantize}",
                    *self.COMMON,
                ]
            )
        )
        self.assertEqual(reporting.read_json(path + ".json"), report)
        self.assertTrue(REPORT_KEYS <= set(report), REPORT_KEYS - set(report))
        self.assertEqual(report["test_examples"], 10000)
        self.assertEqual(report["tflite"]["bytes"], os.path.getsize(path))
        self.assertEqual(report["saved_model"]["bytes"], lite.saved_model_bytes(self.model_dir))
        self.assertGreater(report["saved_model"]["test_accuracy"], 0.8)
        with open(path, "rb") as f:
            content = f.read()
        interpreter = tf.lite.Interpreter(model_content=content)
        self.assertEqual(
            interpreter.get_signature_list(),
            {
                "serving_default": {
                    "inputs": ["images"],
                    "outputs": ["class_names", "classes", "logits", "probabilities"],
                }
            },
        )
        (images,) = interpreter.get_signature_runner("serving_default").get_input_details().values()
        self.assertEqual(images["dtype"], np.uint8)
        self.assertAllEqual(images["shape_signature"], [-1, 28, 28, 1])
        return report, content

    def test_float32_matches_the_saved_model(self):
        report, content = self._convert("none")
        self.assertLessEqual(abs(report["accuracy_drop_points"]), 0.1)
        self.assertTrue(report["within_parity"])
        self.assertEqual(report["representative_examples"], 0)
        served = export.load_serving_model(self.model_dir)
        self.assertAllClose(
            lite.tflite_logits(content, self.test.images[:256], batch_size=100),
            served.predict_logits(self.test.images[:256]),
            atol=1e-4,
        )
        runner = tf.lite.Interpreter(model_content=content).get_signature_runner()
        outputs = runner(images=self.test.images[:8])
        self.assertEqual(outputs["classes"].dtype, np.int64)
        self.assertAllEqual(outputs["classes"], np.argmax(outputs["logits"], axis=1))
        # The labels file beside the .tflite is the export's, and names the
        # classes the TFLite model returns.
        with open(report["labels_path"], encoding="utf-8") as f:
            labels = f.read().splitlines()
        self.assertEqual(report["labels_path"], report["tflite_path"] + ".labels.txt")
        self.assertEqual(tuple(labels), served.class_names)
        self.assertEqual(labels, [str(digit) for digit in range(10)])
        self.assertEqual(
            [name.decode() for name in outputs["class_names"]],
            [labels[k] for k in outputs["classes"]],
        )

    def test_int8_within_half_a_point(self):
        report, content = self._convert("int8")
        self.assertLessEqual(abs(report["accuracy_drop_points"]), 0.5)
        self.assertTrue(report["within_parity"])
        self.assertEqual(report["representative_examples"], lite.REPRESENTATIVE_EXAMPLES)
        self.assertGreater(report["same_class_fraction"], 0.98)
        float_bytes = len(lite.convert(self.model_dir, "none"))
        self.assertLess(report["tflite"]["bytes"], float_bytes / 2)
        tensors = tf.lite.Interpreter(model_content=content).get_tensor_details()
        self.assertIn(np.int8, {t["dtype"] for t in tensors})

    def test_never_overwrites(self):
        path = os.path.join(self.root, "taken.tflite")
        with open(path, "wb") as f:
            f.write(b"earlier result")
        settings = command_line.parse(
            [
                "--stage=tflite",
                f"--model_dir={self.model_dir}",
                f"--tflite_path={path}",
                *self.COMMON,
            ]
        )
        with self.assertRaisesRegex(UserError, "already exists"):
            stages.run(settings)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"earlier result")
        self.assertFalse(os.path.exists(path + ".json"))
        with self.assertRaisesRegex(UserError, "needs tflite_path=FILE") as caught:
            stages.run(command_line.parse(["--stage=tflite", f"--model_dir={self.model_dir}"]))
        self.assertIn("--tflite_path=FILE", command_line.describe(caught.exception))
