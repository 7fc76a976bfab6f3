"""pytest setup shared by the kd_tf tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_collection_modifyitems(config, items):
    # tf.test.TestCase defines a deprecated `test_session` context manager that
    # pytest would otherwise collect as a (skipped) test of every class.
    items[:] = [item for item in items if item.name != "test_session"]
