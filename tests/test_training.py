"""Optimiser schedules and logit scoring."""

import keras
import numpy as np
import tensorflow as tf

from kd_tf import training


class EvaluateLogitsTest(tf.test.TestCase):
    def test_matches_keras_cross_entropy(self):
        logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]], np.float32)
        labels = np.array([0, 1, 1])
        metrics = training.evaluate_logits(logits, labels)
        self.assertAllClose(metrics["accuracy"], 2 / 3)
        expected_loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        )
        self.assertAllClose(metrics["loss"], expected_loss, atol=1e-6)
        self.assertIsInstance(metrics["loss"], float)
        with self.assertRaises(ValueError):
            training.evaluate_logits(logits, labels[:2])


class MakeOptimizerTest(tf.test.TestCase):
    def test_cosine_schedule_warms_up_then_decays_to_zero(self):
        optimizer = training.make_optimizer(
            "adam", 1e-2, "cosine", steps_per_epoch=10, epochs=4, warmup_epochs=1
        )
        schedule = optimizer._learning_rate
        rates = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
        self.assertAllClose(rates[0], 0.0)
        self.assertAllClose(rates[1], 5e-3)
        self.assertAllClose(rates[2], 1e-2)
        self.assertLess(rates[3], 1e-2)
        self.assertAllClose(rates[4], 0.0, atol=1e-9)

    def test_constant_schedule_and_names(self):
        for name, cls in (
            ("adam", keras.optimizers.Adam),
            ("adamw", keras.optimizers.AdamW),
            ("adadelta", keras.optimizers.Adadelta),
            ("sgd", keras.optimizers.SGD),
        ):
            optimizer = training.make_optimizer(name, 0.5, "constant", steps_per_epoch=3, epochs=2)
            self.assertIsInstance(optimizer, cls)
            self.assertAllClose(float(optimizer.learning_rate), 0.5)


if __name__ == "__main__":
    tf.test.main()
