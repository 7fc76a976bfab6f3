"""kd_tf.distribution: the strategy each `--strategy` gives, and the refusals
(no training; the 2 logical CPU devices of tests/conftest.py)."""

import os

import tensorflow as tf

from kd_tf import command_line, distribution
from kd_tf.errors import UserError


def _strategy(*argv):
    config = command_line.parse(["--stage=teacher", *argv])
    return distribution.strategy_for(config.runtime, config.optimization.batch_size)


class StrategyTest(tf.test.TestCase):
    def test_default_mirrored_and_auto(self):
        default = _strategy("--strategy=default")
        self.assertEqual(distribution.strategy_name(default), "default")
        self.assertEqual(distribution.replicas(default), 1)
        mirrored = _strategy("--strategy=mirrored", "--cpu_devices=2")
        self.assertIsInstance(mirrored, tf.distribute.MirroredStrategy)
        self.assertEqual(distribution.replicas(mirrored), 2)
        # No GPU here: auto is the default strategy.
        auto = _strategy()
        self.assertEqual(distribution.strategy_name(auto), "default")
        for strategy in (default, mirrored, auto):
            self.assertEqual(distribution.workers(strategy), 1)
            self.assertTrue(distribution.is_chief(strategy))
            self.assertEqual(distribution.worker_dir(strategy, "/x/y"), "/x/y")

    def test_user_errors(self):
        tf.config.list_logical_devices()  # TensorFlow has set up its devices.
        cases = {
            ("--strategy=mirrored", "--cpu_devices=2", "--batch_size=65"): "multiple of 2",
            ("--strategy=mirrored", "--cpu_devices=3"): "too late",
            ("--strategy=multi_worker",): "needs TF_CONFIG",
        }
        environ = dict(os.environ)
        os.environ.pop("TF_CONFIG", None)
        try:
            for argv, message in cases.items():
                with self.subTest(argv=argv), self.assertRaisesRegex(UserError, message):
                    _strategy(*argv)
            for tf_config, message in (
                ("{not json", "not a valid cluster"),
                (
                    '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
                    "not in",
                ),
            ):
                os.environ["TF_CONFIG"] = tf_config
                with self.subTest(tf_config=tf_config), self.assertRaisesRegex(UserError, message):
                    _strategy("--strategy=multi_worker")
        finally:
            os.environ.clear()
            os.environ.update(environ)


if __name__ == "__main__":
    tf.test.main()
