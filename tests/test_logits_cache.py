"""kd_tf.logits_cache: where cached logits live (the table itself, in memory
and on disk, is tested in tests/test_streaming.py; the student stage with
each cache in tests/test_stages.py), and that the pipelines read the table
from outside their graph."""


import numpy as np
import tensorflow as tf

from kd_tf import data, logits_cache, pipelines


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
