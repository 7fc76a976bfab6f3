"""pytest setup shared by the kd_tf tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kd_tf import distribution

# Logical devices can only be configured before TensorFlow initialises its
# devices, i.e. before the first test runs an op; two CPU devices let
# tests/test_distribution.py run MirroredStrategy with 2 replicas in-process.
# Everything else places its ops on the first device, as with one.
TEST_CPU_DEVICES = 2
distribution.configure_cpu_devices(TEST_CPU_DEVICES)


def pytest_collection_modifyitems(config, items):
    # tf.test.TestCase defines a deprecated `test_session` context manager that
    # pytest would otherwise collect as a (skipped) test of every class.
    items[:] = [item for item in items if item.name != "test_session"]
