"""kd_tf.export (and kd_tf.atomic under it) on synthetic models: the serving
contract, versions, writing, loading, and failures while exporting."""

import errno
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

import helpers
import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import atomic, command_line, export, training
from kd_tf.errors import UserError
from kd_tf.export import writing

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
CLASS_NAMES = ("cat", "dog", "bird", "horse", "frog", "deer", "ship", "truck", "car", "plane")


class _Jitter(keras.layers.Layer):
    """Adds fresh random noise on every call, so no export can match it."""

    def call(self, x):
        return x + tf.random.uniform(tf.shape(x))


@pytest.fixture(scope="class")
def shared_export(request, class_root):
    """A tiny model (`cls.model`) exported once into `<root>/shared/1`
    (`cls.export_dir`), its classes named `CLASS_NAMES`, checked on `cls.images`."""
    cls = request.cls
    cls.model = helpers.tiny_model(seed=1234)
    cls.images = helpers.random_images(16)
    cls.export_dir = export.export_model(
        cls.model, os.path.join(class_root, "shared", "1"), check_images=cls.images,
        class_names=CLASS_NAMES,
    )


@pytest.mark.usefixtures("shared_export")
class ExportTest(tf.test.TestCase):
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

        self.assertEqual(served.class_names, CLASS_NAMES)
        with open(os.path.join(self.export_dir, "assets", "labels.txt"), encoding="utf-8") as f:
            self.assertEqual(f.read(), "".join(f"{name}\n" for name in CLASS_NAMES))
        outputs = served.outputs(self.images)
        self.assertEqual(set(outputs), {"logits", "probabilities", "classes", "class_names"})
        self.assertAllEqual(
            [name.decode() for name in outputs["class_names"].numpy()],
            [CLASS_NAMES[k] for k in outputs["classes"].numpy()],
        )
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
            "class_names",
            "DT_STRING",
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
        names = np.load(os.path.join(outdir, "class_names.npy"), allow_pickle=True)
        self.assertEqual([bytes(name).decode() for name in names], [CLASS_NAMES[k] for k in classes])
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
        before = helpers.snapshot(self.export_dir)
        with self.assertRaisesRegex(UserError, "already holds an export"):
            export.export_model(helpers.tiny_model(), self.export_dir, check_images=self.images)
        self.assertEqual(helpers.snapshot(self.export_dir), before)
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
        return helpers.save_module(os.path.join(self._tmp(), name), fn, signature)

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

        no_default = helpers.save_module(
            os.path.join(self._tmp(), "no_default"),
            lambda images: {"logits": tf.zeros([tf.shape(images)[0], 2])},
            tf.TensorSpec([None, 2], tf.uint8),
            signature="other",
        )
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


class ExportFailureTest(tf.test.TestCase):
    """A failure while exporting never damages the export already in place."""

    def setUp(self):
        super().setUp()
        self.parent = os.path.join(self.get_temp_dir(), "exports")
        self.target = export.export_model(
            helpers.tiny_model(seed=1),
            os.path.join(self.parent, "1"),
            check_images=helpers.random_images(8),
        )
        self.before = helpers.snapshot(self.target)

    def tearDown(self):
        shutil.rmtree(self.parent, ignore_errors=True)
        super().tearDown()

    def _overwrite(self, finalize=None):
        return export.export_model(
            helpers.tiny_model(seed=2),
            self.target,
            check_images=helpers.random_images(8),
            finalize=finalize,
            overwrite=True,
        )

    def _assert_untouched(self):
        self.assertEqual(helpers.snapshot(self.target), self.before)
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
                mock.patch.object(
                    writing, "_write_saved_model", side_effect=helpers.failing_writer(error)
                ),
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
            exchanged.append((helpers.snapshot(a), helpers.snapshot(b)))
            return swap(a, b)

        with mock.patch.object(atomic, "_exchange", side_effect=record):
            self._overwrite()
        ((new, old),) = exchanged
        self.assertEqual(old, self.before, "the old export stayed until the swap")
        self.assertEqual(helpers.snapshot(self.target), new)
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
        self.assertNotEqual(helpers.snapshot(self.target), self.before)
        (leftover,) = [name for name in os.listdir(self.parent) if name != "1"]
        self.assertStartsWith(leftover, ".1.tmp-")
        self.assertEqual(helpers.snapshot(os.path.join(self.parent, leftover)), self.before)

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
        self.assertNotEqual(helpers.snapshot(self.target), self.before)
        self.assertEqual(os.listdir(self.parent), ["1"])
