"""kd_tf.distribution: the strategy each `--strategy` gives, and the refusals
(no training; the 2 logical CPU devices of tests/conftest.py)."""

import os

import keras
import numpy as np
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


class StepsPerExecutionTest(tf.test.TestCase):
    def test_the_largest_divisor_of_an_epoch_up_to_the_request(self):
        cases = {(8, 430): 5, (8, 12): 6, (8, 7): 7, (8, 16): 8, (8, 1): 1, (1, 430): 1}
        for (requested, steps), expected in cases.items():
            with self.subTest(requested=requested, steps_per_epoch=steps):
                self.assertEqual(distribution.steps_per_execution(requested, steps), expected)

    def test_each_epoch_trains_its_own_steps(self):
        """8 steps a call asked for, epochs of 4 steps: each epoch ends after
        4 more optimiser steps (Keras alone would train 8 in epoch 1)."""
        images = np.random.default_rng(0).random((16, 3), np.float32)
        dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(16, np.int64)))
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(
            optimizer="sgd",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            steps_per_execution=distribution.steps_per_execution(8, 4),
        )
        ends = []
        record = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: ends.append(int(model.optimizer.iterations))
        )
        model.fit(
            dataset.batch(4).repeat(), epochs=3, steps_per_epoch=4, callbacks=[record], verbose=0
        )
        self.assertEqual(ends, [4, 8, 12])


if __name__ == "__main__":
    tf.test.main()
