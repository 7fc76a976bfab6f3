"""kd_tf.logits_cache: where cached logits live (the table itself, in memory
and on disk, is tested in tests/test_streaming.py; the student stage with
each cache in tests/test_stages.py)."""


import tensorflow as tf

from kd_tf import logits_cache


class ResolveCacheTest(tf.test.TestCase):
    def test_auto_goes_to_disk_past_the_memory_budget(self):
        # 1,000,000 examples x 1000 classes x 4 bytes = 3815 MiB.
        self.assertEqual(logits_cache.resolve_cache("auto", 1_000_000, 1000, 4096), "memory")
        self.assertEqual(logits_cache.resolve_cache("auto", 1_000_000, 1000, 2048), "disk")
        self.assertEqual(logits_cache.resolve_cache("disk", 10, 10, 4096), "disk")
        self.assertEqual(logits_cache.resolve_cache("memory", 10**9, 1000, 1), "memory")
        with self.assertRaises(ValueError):
            logits_cache.resolve_cache("ram", 10, 10, 1)
