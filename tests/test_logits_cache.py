"""kd_tf.logits_cache: shards hold exactly the in-memory logits, and the
streaming pipelines keep every image with its own logits and label (no
training; the student stage with each cache is in tests/test_stages.py)."""

import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import data, export, logits_cache, models


class ResolveCacheTest(tf.test.TestCase):
    def test_auto_goes_to_disk_past_the_memory_budget(self):
        # 1,000,000 examples x 1000 classes x 4 bytes = 3815 MiB.
        self.assertEqual(logits_cache.resolve_cache("auto", 1_000_000, 1000, 4096), "memory")
        self.assertEqual(logits_cache.resolve_cache("auto", 1_000_000, 1000, 2048), "disk")
        self.assertEqual(logits_cache.resolve_cache("disk", 10, 10, 4096), "disk")
        self.assertEqual(logits_cache.resolve_cache("memory", 10**9, 1000, 1), "memory")
        with self.assertRaises(ValueError):
            logits_cache.resolve_cache("ram", 10, 10, 1)


@pytest.fixture(scope="class")
def shards(request, class_root):
    """1000 training images of real MNIST, an untrained seeded `compact_cnn`
    teacher export (the shards must hold what it predicts, whatever it
    predicts), its logits and their shards: `cls.images`, `cls.labels`,
    `cls.teacher`, `cls.logits`, `cls.shards`."""
    cls = request.cls
    splits = data.load_splits(
        "mnist",
        "packaged",
        validation_examples=100,
        train_examples=1000,
        tfds_data_dir=None,
        idx_dir=None,
    )
    cls.images, cls.labels = splits.train.images, splits.train.labels
    keras.utils.set_random_seed(0)
    model = models.build_model("compact_cnn", splits.image_shape, splits.num_classes)
    teacher_dir = os.path.join(class_root, "teacher")
    export.export_model(model, teacher_dir, check_images=cls.images[:8])
    cls.teacher = export.load_serving_model(teacher_dir)
    cls.logits = cls.teacher.predict_logits(cls.images, batch_size=256)
    cls.shards = logits_cache.write_shards(
        cls.teacher,
        cls.images,
        cls.labels,
        os.path.join(class_root, "shards"),
        batch_size=96,
    )


@pytest.mark.usefixtures("shards")
class ShardsTest(tf.test.TestCase):
    def _stream_arrays(self, dataset, batches):
        parts = list(dataset.take(batches).as_numpy_iterator())
        images = np.concatenate([p[0][0] for p in parts])
        logits = np.concatenate([p[0][1] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return images, logits, labels

    def test_evaluation_stream_equals_the_in_memory_arrays(self):
        stream = logits_cache.evaluation_stream(
            self.shards, 128, image_shape=(28, 28, 1), num_classes=10
        )
        images, logits, labels = self._stream_arrays(stream, -1)
        self.assertAllEqual(images, self.images)
        self.assertAllEqual(labels, self.labels)
        self.assertAllEqual(logits, self.logits)

    def test_shards_are_bounded(self):
        with tempfile.TemporaryDirectory() as directory:
            original = logits_cache.EXAMPLES_PER_SHARD
            logits_cache.EXAMPLES_PER_SHARD = 256
            try:
                shards = logits_cache.write_shards(
                    self.teacher, self.images, self.labels, directory, batch_size=100
                )
            finally:
                logits_cache.EXAMPLES_PER_SHARD = original
            # 200 examples (two whole batches) per shard: 1000 examples in 5 shards.
            self.assertLen(shards, 5)
            with self.assertRaisesRegex(ValueError, "not empty"):
                logits_cache.write_shards(self.teacher, self.images, self.labels, directory)

    def test_training_stream_shuffles_and_keeps_each_image_with_its_logits(self):
        def stream():
            return logits_cache.training_stream(
                self.shards, 100, seed=3, image_shape=(28, 28, 1), num_classes=10
            )

        images, logits, labels = self._stream_arrays(stream(), 20)
        self.assertEqual(len(labels), 2000)
        # Each streamed image comes with its own label and logits.
        index = {image.tobytes(): i for i, image in enumerate(self.images)}
        positions = np.array([index[image.tobytes()] for image in images])
        self.assertAllEqual(labels, self.labels[positions])
        self.assertAllEqual(logits, self.logits[positions])
        # Two passes over all 1000 examples, each example once per pass, shuffled.
        self.assertAllEqual(np.bincount(positions, minlength=1000), np.full(1000, 2))
        self.assertNotAllEqual(positions[:1000], np.arange(1000))
        # Seeded: the same stream again.
        again, _, _ = self._stream_arrays(stream(), 20)
        self.assertAllEqual(again, images)
