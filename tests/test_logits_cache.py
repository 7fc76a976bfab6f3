"""kd_tf.logits_cache: where cached logits live (the table itself, in memory
and on disk, is tested in tests/test_streaming.py; the student stage with
each cache in tests/test_stages.py), that the pipelines read the table
from outside their graph, and that a full disk is one error line, never a
crash (`FullDiskTest`)."""

import errno
import os
from unittest import mock

import helpers
import numpy as np
import tensorflow as tf

from kd_tf import data, logits_cache, pipelines
from kd_tf.errors import ConfigError


class ResolveCacheTest(tf.test.TestCase):
    def test_auto_goes_to_disk_past_the_memory_budget(self):
        # 1,000,000 examples x 1000 classes x 4 bytes = 3815 MiB.
        self.assertEqual(logits_cache.resolve_cache("auto", 1_000_000, 1000, 4096), "memory")
        self.assertEqual(logits_cache.resolve_cache("auto", 1_000_000, 1000, 2048), "disk")
        self.assertEqual(logits_cache.resolve_cache("disk", 10, 10, 4096), "disk")
        self.assertEqual(logits_cache.resolve_cache("memory", 10**9, 1000, 1), "memory")
        with self.assertRaises(ValueError):
            logits_cache.resolve_cache("ram", 10, 10, 1)


class TableOutsideTheGraphTest(tf.test.TestCase):
    def test_the_training_pipeline_graph_does_not_hold_the_table(self):
        # A tf.data graph is copied by each of its rewrites: a table embedded
        # as a constant made a 4.2 GB run's peak 2,076 MiB instead of 1,253.
        examples, views, classes = 4096, 4, 10
        split = data.Split(np.zeros((examples, 2, 2, 1), np.uint8), np.zeros(examples, np.int64))
        table = logits_cache.LogitsTable(
            np.random.default_rng(0).standard_normal((examples, views, classes)).astype(np.float32)
        )
        for name, dataset in (
            ("training", pipelines.training_dataset(split, 8, seed=0, views=views, logits=table)),
            ("evaluation", pipelines.evaluation_dataset(split, 8, logits=table)),
        ):
            with self.subTest(name):
                graph_bytes = len(dataset._as_serialized_graph().numpy())
                self.assertLess(graph_bytes, table.array.nbytes / 4)
                first = next(iter(dataset))
                self.assertAllEqual(first[0][1].shape, (8, classes))


def _teacher_logits(images):
    """A stand-in teacher with 10 classes: logits all 1."""
    return tf.ones([tf.shape(images)[0], 10])


class FullDiskTest(tf.test.TestCase):
    """A memmap's pages get disk blocks when first written, and one written
    where the disk is full killed the student stage with SIGBUS (exit 135),
    leaving a partial train.npy."""

    def setUp(self):
        super().setUp()
        self.split = data.Split(np.zeros((300, 2, 2, 1), np.uint8), np.zeros(300, np.int64))
        self.path = os.path.join(self.get_temp_dir(), f"{self.id()}.npy")

    def test_the_file_is_allocated_before_it_is_written(self):
        array = logits_cache.allocated_file(self.path, (50_000, 4, 10))
        stat = os.stat(self.path)
        # A sparse file has blocks only for the pages written (its header's).
        self.assertGreaterEqual(stat.st_blocks * 512, stat.st_size)
        self.assertAllEqual(array[::997], np.zeros((51, 4, 10)))
        table = logits_cache.LogitsTable.compute(
            _teacher_logits, 10, self.split, num_views=4, seed=0, path=self.path
        )
        self.assertAllEqual(table.array, np.ones((300, 4, 10)))

    def test_a_full_disk_is_a_config_error_and_leaves_no_file(self):
        full = OSError(errno.ENOSPC, "No space left on device")
        with mock.patch.object(os, "posix_fallocate", side_effect=full):
            with self.assertRaisesRegex(
                ConfigError,
                r"could not write the teacher's logits \(0.0 MiB\) to .* \(No space left on "
                r"device\): free some space there, pass another logits_cache_dir, or "
                r"logits_cache=memory",
            ):
                logits_cache.LogitsTable.compute(
                    _teacher_logits, 10, self.split, num_views=4, seed=0, path=self.path
                )
        self.assertFalse(os.path.exists(self.path))

    def test_the_student_stage_on_a_full_disk_says_so_in_one_line(self):
        root = self.get_temp_dir()
        teacher = helpers.tiny_export(os.path.join(root, "teacher"))
        cache_dir = os.path.join(root, "small_disk")
        os.makedirs(cache_dir)
        # 2048 examples x 15 views x 10 classes x 4 bytes = 1.2 MiB > 256 KiB.
        status, stderr, left = helpers.run_on_full_disk(
            cache_dir,
            256,
            helpers.slice_argv(
                root, "--stage=student", f"--teacher_dir={teacher}", "--min_teacher_accuracy=0",
                "--epochs=1",
                "--train_examples=2048", "--augment", "--augment_views=15",
                "--logits_cache=disk", f"--logits_cache_dir={cache_dir}",
            ),
        )
        self.assertEqual(status, 2, stderr[-2000:])
        self.assertNotIn("Traceback", stderr)
        self.assertNotIn("Fatal Python error", stderr)
        self.assertEqual(
            [line.split(" to ")[0] for line in helpers.kd_tf_lines(stderr)],
            ["kd_tf: error: could not write the teacher's logits (1.2 MiB)"],
        )
        self.assertEqual(left, [], "the shards are removed")
