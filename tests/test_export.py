"""Tests for kd_tf.export."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from kd_tf import command_line, export, training
from kd_tf.errors import UserError

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def _tiny_model():
    inputs = keras.Input(IMAGE_SHAPE, dtype="uint8")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(NUM_CLASSES)(x)
    return keras.Model(inputs, outputs)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n,) + IMAGE_SHAPE, dtype=np.uint8)


class _Jitter(keras.layers.Layer):
    """Adds fresh random noise on every call, so no export can match it."""

    def call(self, x):
        return x + tf.random.uniform(tf.shape(x))


def _snapshot(directory):
    """Map every file under `directory` to its bytes."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


class ExportTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        keras.utils.set_random_seed(1234)
        cls.root = tempfile.mkdtemp()
        cls.model = _tiny_model()
        cls.images = _images(16)
        cls.export_dir = export.export_model(
            cls.model,
            os.path.join(cls.root, "shared", "1"),
            check_images=cls.images,
        )

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        keras.utils.set_random_seed(1234)

    def _tmp(self):
        return tempfile.mkdtemp(dir=self.root)

    def test_round_trip_from_disk(self):
        served = export.load_serving_model(self.export_dir)
        self.assertIsInstance(served, export.ServingModel)
        self.assertEqual(served.image_shape, IMAGE_SHAPE)
        self.assertEqual(served.num_classes, NUM_CLASSES)
        self.assertEqual(served.path, self.export_dir)

        expected = self.model(self.images, training=False)
        self.assertAllClose(served.logits(self.images), expected, atol=1e-5)
        self.assertAllClose(
            served.predict_logits(self.images, batch_size=5),
            expected,
            atol=1e-5,
        )

        outputs = served.outputs(self.images)
        self.assertEqual(set(outputs), {"logits", "probabilities", "classes"})
        self.assertEqual(outputs["logits"].dtype, tf.float32)
        self.assertEqual(outputs["probabilities"].dtype, tf.float32)
        self.assertAllClose(
            tf.reduce_sum(outputs["probabilities"], axis=-1),
            np.ones(len(self.images)),
            atol=1e-6,
        )
        self.assertEqual(outputs["classes"].dtype, tf.int64)
        self.assertAllEqual(outputs["classes"], np.argmax(outputs["logits"], axis=-1))

        signature = tf.saved_model.load(self.export_dir).signatures["serving_default"]
        args, kwargs = signature.structured_input_signature
        self.assertEqual(args, ())
        self.assertEqual(list(kwargs), ["images"])
        self.assertEqual(kwargs["images"].dtype, tf.uint8)
        self.assertEqual(kwargs["images"].shape.as_list(), [None, 28, 28, 1])
        self.assertEqual(os.listdir(os.path.dirname(self.export_dir)), ["1"])

    def test_saved_model_cli_shows_contract(self):
        cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
        self.assertTrue(os.path.exists(cli), cli)
        result = subprocess.run(
            [
                cli,
                "show",
                "--dir",
                self.export_dir,
                "--tag_set",
                "serve",
                "--signature_def",
                "serving_default",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        for word in (
            "images",
            "DT_UINT8",
            "logits",
            "probabilities",
            "classes",
            "DT_INT64",
        ):
            self.assertIn(word, result.stdout)

    def test_saved_model_cli_run_gives_the_same_classes(self):
        cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
        work = self._tmp()
        inputs = os.path.join(work, "images.npy")
        np.save(inputs, self.images)
        outdir = os.path.join(work, "out")
        subprocess.run(
            [
                cli,
                "run",
                "--dir",
                self.export_dir,
                "--tag_set",
                "serve",
                "--signature_def",
                "serving_default",
                "--inputs",
                f"images={inputs}",
                "--outdir",
                outdir,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        expected = self.model(self.images, training=False)
        classes = np.load(os.path.join(outdir, "classes.npy"))
        self.assertEqual(classes.dtype, np.int64)
        self.assertAllEqual(classes, np.argmax(expected, axis=-1))
        self.assertAllClose(np.load(os.path.join(outdir, "logits.npy")), expected, atol=1e-5)

    def test_next_version_dir(self):
        root = self._tmp()
        first = export.next_version_dir(root, "teacher")
        self.assertEqual(first, os.path.join(root, "teacher", "1"))
        export.export_model(self.model, first, check_images=self.images)
        self.assertEqual(
            export.next_version_dir(root, "teacher"),
            os.path.join(root, "teacher", "2"),
        )
        os.makedirs(os.path.join(root, "teacher", "7"))
        os.makedirs(os.path.join(root, "teacher", "notes"))
        os.makedirs(os.path.join(root, "teacher", ".9.tmp-1-abc"))
        self.assertEqual(
            export.next_version_dir(root, "teacher"),
            os.path.join(root, "teacher", "8"),
        )
        self.assertEqual(
            export.next_version_dir(root, "student"),
            os.path.join(root, "student", "1"),
        )

    def test_export_never_overwrites(self):
        before = _snapshot(self.export_dir)
        with self.assertRaisesRegex(UserError, "already holds an export"):
            export.export_model(_tiny_model(), self.export_dir, check_images=self.images)
        self.assertEqual(_snapshot(self.export_dir), before)
        self.assertEqual(os.listdir(os.path.dirname(self.export_dir)), ["1"])

    def test_export_into_empty_dir(self):
        target = self._tmp()
        self.assertEqual(
            export.export_model(self.model, target, check_images=self.images),
            target,
        )
        self.assertTrue(tf.saved_model.contains_saved_model(target))

    def test_resolve_export_dir(self):
        root = self._tmp()
        self.assertEqual(
            export.resolve_export_dir(None, root, "student"),
            os.path.join(root, "student", "1"),
        )
        fresh = os.path.join(root, "fresh")
        self.assertEqual(export.resolve_export_dir(fresh, root, "student"), fresh)
        with self.assertRaisesRegex(UserError, "already holds an export") as caught:
            export.resolve_export_dir(self.export_dir, root, "student")
        self.assertIn(
            "pass another --export_dir, or --overwrite", command_line.describe(caught.exception)
        )

    def test_finalize_writes_assets_extra(self):
        target = os.path.join(self._tmp(), "student", "1")
        seen = {}

        def finalize(tmp_dir, served):
            seen["tmp_dir"] = tmp_dir
            metrics = training.evaluate_logits(
                served.predict_logits(self.images),
                np.arange(len(self.images)) % NUM_CLASSES,
            )
            path = os.path.join(export.assets_extra_dir(tmp_dir), "report.json")
            with open(path, "w") as f:
                json.dump(metrics, f)

        export.export_model(self.model, target, check_images=self.images, finalize=finalize)
        self.assertEqual(os.path.dirname(seen["tmp_dir"]), os.path.dirname(target))
        self.assertStartsWith(os.path.basename(seen["tmp_dir"]), ".1.tmp-")
        self.assertFalse(os.path.exists(seen["tmp_dir"]))
        with open(os.path.join(target, "assets.extra", "report.json")) as f:
            self.assertEqual(set(json.load(f)), {"accuracy", "loss"})
        self.assertEqual(os.listdir(os.path.dirname(target)), ["1"])
        export.load_serving_model(target)

    def test_failing_finalize_leaves_no_debris(self):
        parent = os.path.join(self._tmp(), "student")
        target = os.path.join(parent, "1")

        def finalize(tmp_dir, served):
            with open(os.path.join(tmp_dir, "partial"), "w") as f:
                f.write("x")
            raise ValueError("evaluation failed")

        with self.assertRaisesRegex(ValueError, "evaluation failed"):
            export.export_model(self.model, target, check_images=self.images, finalize=finalize)
        self.assertFalse(os.path.exists(target))
        self.assertEqual(os.listdir(parent), [])

    def test_mismatch_raises_and_leaves_no_debris(self):
        inputs = keras.Input(IMAGE_SHAPE, dtype="uint8")
        x = keras.layers.Rescaling(1.0 / 255)(inputs)
        x = keras.layers.Flatten()(x)
        outputs = _Jitter()(keras.layers.Dense(NUM_CLASSES)(x))
        model = keras.Model(inputs, outputs)
        parent = self._tmp()
        with self.assertRaisesRegex(RuntimeError, "differ from the model"):
            export.export_model(model, os.path.join(parent, "1"), check_images=self.images)
        self.assertEqual(os.listdir(parent), [])

    def test_load_errors(self):
        root = self._tmp()
        with self.assertRaisesRegex(UserError, "does not exist"):
            export.load_serving_model(os.path.join(root, "missing"))

        empty = os.path.join(root, "empty")
        os.makedirs(empty)
        with self.assertRaisesRegex(UserError, "saved_model.pb"):
            export.load_serving_model(empty)

        junk = os.path.join(root, "junk")
        os.makedirs(junk)
        with open(os.path.join(junk, "weights.bin"), "wb") as f:
            f.write(b"\x00junk")
        with self.assertRaisesRegex(UserError, "saved_model.pb"):
            export.load_serving_model(junk)
        with open(os.path.join(junk, "saved_model.pb"), "wb") as f:
            f.write(b"not a protobuf")
        with self.assertRaisesRegex(UserError, "could not load"):
            export.load_serving_model(junk)

        truncated = os.path.join(root, "truncated")
        shutil.copytree(self.export_dir, truncated)
        (data,) = glob.glob(os.path.join(truncated, "variables", "variables.data-*"))
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
        with self.assertRaisesRegex(UserError, "could not load.*re-export"):
            export.load_serving_model(truncated)

    def _save_module(self, fn, signature, name):
        module = tf.Module()
        module.fn = tf.function(fn, input_signature=[signature])
        path = os.path.join(self._tmp(), name)
        tf.saved_model.save(module, path, signatures={"serving_default": module.fn})
        return path

    def test_load_rejects_contract_violations(self):
        float_input = self._save_module(
            lambda images: {"logits": tf.reduce_mean(images, [1, 2])},
            tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images"),
            "float_input",
        )
        with self.assertRaisesRegex(UserError, "uint8.*float32"):
            export.load_serving_model(float_input)

        wrong_name = self._save_module(
            lambda pixels: {"logits": tf.zeros([tf.shape(pixels)[0], 2])},
            tf.TensorSpec([None, 28, 28, 1], tf.uint8, name="pixels"),
            "wrong_name",
        )
        with self.assertRaisesRegex(UserError, "'images'"):
            export.load_serving_model(wrong_name)

        no_logits = self._save_module(
            lambda images: {"scores": tf.zeros([tf.shape(images)[0], 2])},
            tf.TensorSpec([None, 28, 28, 1], tf.uint8, name="images"),
            "no_logits",
        )
        with self.assertRaisesRegex(UserError, "no 'logits' output"):
            export.load_serving_model(no_logits)

        module = tf.Module()
        module.fn = tf.function(
            lambda images: {"logits": tf.zeros([tf.shape(images)[0], 2])},
            input_signature=[tf.TensorSpec([None, 2], tf.uint8)],
        )
        no_default = os.path.join(self._tmp(), "no_default")
        tf.saved_model.save(module, no_default, signatures={"other": module.fn})
        with self.assertRaisesRegex(UserError, "no 'serving_default'"):
            export.load_serving_model(no_default)

    def test_foreign_savedmodel_with_dynamic_logits_width(self):
        path = self._save_module(
            lambda images: {
                "logits": tf.reshape(
                    tf.cast(images[:, :1, :3, 0], tf.float32),
                    [tf.shape(images)[0], -1],
                )
            },
            tf.TensorSpec([None, 28, 28, 1], tf.uint8, name="images"),
            "foreign",
        )
        served = export.load_serving_model(path)
        self.assertEqual(served.num_classes, 3)
        self.assertAllEqual(
            served.predict_logits(self.images[:2]),
            self.images[:2, 0, :3, 0].astype(np.float32),
        )

    def test_keras_file_round_trip(self):
        path = os.path.join(self._tmp(), "model.keras")
        self.model.save(path)
        served = export.load_serving_model(path)
        self.assertEqual(served.image_shape, IMAGE_SHAPE)
        self.assertEqual(served.num_classes, NUM_CLASSES)
        expected = self.model(self.images, training=False)
        self.assertAllClose(served.predict_logits(self.images, batch_size=7), expected)
        outputs = served.outputs(self.images)
        self.assertAllEqual(outputs["classes"], np.argmax(expected, axis=-1))
        self.assertEqual(outputs["classes"].dtype, tf.int64)

        inputs = keras.Input(IMAGE_SHAPE, dtype="float32")
        float_model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
        float_path = os.path.join(self._tmp(), "float.keras")
        float_model.save(float_path)
        with self.assertRaisesRegex(UserError, "uint8"):
            export.load_serving_model(float_path)

        broken = os.path.join(self._tmp(), "broken.keras")
        with open(broken, "wb") as f:
            f.write(b"not a zip")
        with self.assertRaisesRegex(UserError, "could not load"):
            export.load_serving_model(broken)

    def test_logits_inside_tf_function(self):
        keras_path = os.path.join(self._tmp(), "model.keras")
        self.model.save(keras_path)
        expected = self.model(self.images, training=False)
        for path in (self.export_dir, keras_path):
            teacher_logits = tf.function(export.load_serving_model(path).logits)
            self.assertAllClose(teacher_logits(tf.constant(self.images)), expected, atol=1e-5)

    def test_logits_rejects_float_images(self):
        served = export.load_serving_model(self.export_dir)
        with self.assertRaisesRegex(TypeError, "uint8"):
            served.logits(self.images.astype(np.float32))


if __name__ == "__main__":
    tf.test.main()
