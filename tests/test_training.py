"""Optimiser schedules, logit scoring and the best-epoch training loop (on
synthetic arrays)."""

import os

import helpers
import keras
import numpy as np
import tensorflow as tf

from kd_tf import backup, data, models, pipelines, training


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


class FitAndRestoreBestTest(tf.test.TestCase):
    def test_resume_after_the_last_epoch(self):
        """A run killed after its last epoch (during the export) restores
        the records, the best epoch and its weights without training."""
        root = self.get_temp_dir()
        images = helpers.random_images(192)
        labels = np.random.default_rng(1).integers(0, 10, 192)
        results = []
        for _ in range(2):
            keras.utils.set_random_seed(0)
            model = models.build_model("seed_mlp", helpers.IMAGE_SHAPE, 10)
            model.compile(
                optimizer="adam",
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            )
            epochs, best_epoch = training.fit_and_restore_best(
                model,
                pipelines.training_dataset(data.Split(images[:128], labels[:128]), 64, seed=0),
                pipelines.evaluation_dataset(data.Split(images[128:], labels[128:]), 64),
                epochs=2,
                steps_per_epoch=2,
                log_dir=os.path.join(root, "logs"),
                backup_dir=os.path.join(root, "run"),
            )
            results.append((epochs, best_epoch, model.get_weights()))
        self.assertEqual(backup.resumed_epoch(os.path.join(root, "run")), 2)
        (first, first_best, first_weights), (second, second_best, second_weights) = results
        self.assertEqual(second, first)
        self.assertEqual(second_best, first_best)
        for one, two in zip(first_weights, second_weights):
            self.assertAllEqual(one, two)


if __name__ == "__main__":
    tf.test.main()
