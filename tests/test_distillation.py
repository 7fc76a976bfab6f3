"""The Distiller: its train_step (teacher outside the tape, loss scaling,
metrics), the cached and online modes, DKD's warm-up, mixed labels and hints."""

import os

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.eager import record

from kd_tf import data, distillation, hints, logits_cache, pipelines, training
from kd_tf import distillation_losses as losses

KD = [("kd", losses.KD(4.0), 1.0)]


def _tiny_student(seed=0, hidden=0):
    keras.utils.set_random_seed(seed)
    images = keras.Input((4, 4, 1), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(images))
    if hidden:
        x = keras.layers.Dense(hidden, activation="relu", name="hidden")(x)
    return keras.Model(images, keras.layers.Dense(3, name="logits")(x))


class DistillerTest(tf.test.TestCase):
    def setUp(self):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (64, 4, 4, 1), dtype=np.uint8)
        self.labels = rng.integers(0, 3, 64).astype(np.int64)
        self.split = data.Split(self.images, self.labels)
        self.teacher = _tiny_student(seed=1)

    def _teacher_logits(self, images):
        return self.teacher(images, training=False)

    def _distiller(self, online, terms=KD, alpha=0.7, **kwargs):
        return distillation.Distiller(
            _tiny_student(),
            terms,
            alpha=alpha,
            teacher=self._teacher_logits if online else None,
            **kwargs,
        )

    def _cached(self, logits=None):
        logits = self.teacher.predict(self.images, verbose=0) if logits is None else logits
        table = logits_cache.LogitsTable(logits[:, None])
        return pipelines.evaluation_dataset(self.split, 16, logits=table)

    def test_cached_and_online_teachers_give_the_same_losses(self):
        terms = [("kd", losses.KD(4.0), 0.5), ("dist", losses.DIST(4.0), 0.5)]
        cached, online = self._distiller(False, terms), self._distiller(True, terms)
        for model in (cached, online):
            model.compile(optimizer="sgd")
        cached_result = cached.evaluate(self._cached(), return_dict=True, verbose=0)
        online_result = online.evaluate(
            pipelines.evaluation_dataset(self.split, 16), return_dict=True, verbose=0
        )
        self.assertCountEqual(
            cached_result, ["loss", "student_loss", "distillation_loss", "kd_loss", "dist_loss"]
        )
        self.assertAllClose(cached_result, online_result, rtol=1e-5)

    def test_the_loss_weighs_the_terms(self):
        terms = [("kd", losses.KD(4.0), 0.25), ("dist", losses.DIST(4.0), 2.0)]
        distiller = self._distiller(False, terms, alpha=0.7)
        distiller.compile(optimizer="sgd")
        # One batch of 64, so the metrics are that batch's values.
        dataset = pipelines.evaluation_dataset(
            self.split, 64, logits=logits_cache.LogitsTable(self._logits()[:, None])
        )
        result = distiller.evaluate(dataset, return_dict=True, verbose=0)
        student = distiller.student.predict(self.images, verbose=0)
        teacher = self._logits()
        kd = losses.KD(4.0).compute_loss(teacher, student)
        dist = losses.DIST(4.0).compute_loss(teacher, student)
        ce = keras.losses.sparse_categorical_crossentropy(self.labels, student, from_logits=True)
        self.assertAllClose(result["kd_loss"], kd, rtol=1e-5)
        self.assertAllClose(result["dist_loss"], dist, rtol=1e-5)
        self.assertAllClose(result["student_loss"], np.mean(ce), rtol=1e-5)
        self.assertAllClose(result["distillation_loss"], 0.25 * kd + 2.0 * dist, rtol=1e-5)
        self.assertAllClose(
            result["loss"], 0.3 * np.mean(ce) + 0.7 * (0.25 * kd + 2.0 * dist), rtol=1e-5
        )

    def _logits(self):
        return self.teacher.predict(self.images, verbose=0)

    def test_alpha_zero_trains_as_keras_does_on_the_labels(self):
        """One SGD step of the Distiller with alpha=0 equals Keras's own
        train_step with the cross-entropy loss (same gradients, same update)."""
        distiller = self._distiller(False, alpha=0.0)
        distiller.compile(optimizer=keras.optimizers.SGD(0.5))
        distiller.fit(self._cached(), epochs=1, steps_per_epoch=1, verbose=0)
        reference = _tiny_student()
        reference.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        reference.fit(self.images[:16], self.labels[:16], batch_size=16, epochs=1, verbose=0)
        for got, expected in zip(distiller.student.get_weights(), reference.get_weights()):
            self.assertAllClose(got, expected, atol=1e-6)

    def test_the_online_teacher_runs_outside_the_tape(self):
        recorded = []

        def teacher(images):
            recorded.append(record.could_possibly_record())
            return self._teacher_logits(images)

        distiller = distillation.Distiller(_tiny_student(), KD, alpha=0.7, teacher=teacher)
        distiller.compile(optimizer="sgd")
        distiller.fit(pipelines.evaluation_dataset(self.split, 16), epochs=1, verbose=0)
        self.assertNotEmpty(recorded)
        self.assertEqual(set(recorded), {False}, "a gradient tape was recording the teacher")

    def test_training_updates_only_the_student(self):
        teacher_before = [w.copy() for w in self.teacher.get_weights()]
        distiller = self._distiller(online=True)
        student_before = [w.copy() for w in distiller.student.get_weights()]
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        distiller.fit(pipelines.evaluation_dataset(self.split, 16), epochs=1, verbose=0)
        for before, after in zip(teacher_before, self.teacher.get_weights()):
            self.assertAllEqual(before, after)
        changed = [
            not np.array_equal(b, a)
            for b, a in zip(student_before, distiller.student.get_weights())
        ]
        self.assertTrue(all(changed))

    def test_a_keras_teacher_is_frozen(self):
        distiller = distillation.Distiller(_tiny_student(), KD, alpha=0.7, teacher=self.teacher)
        self.assertLen(distiller.trainable_weights, len(distiller.student.trainable_weights))

    def test_mixed_float16_scales_the_loss_through_the_optimizer(self):
        """Under mixed_float16, Keras wraps the optimiser in a
        LossScaleOptimizer, which unscales the gradients: the step is the
        float32 step (to float16's precision)."""
        weights = {}
        for policy in ("float32", "mixed_float16"):
            keras.config.set_dtype_policy(policy)
            try:
                distiller = self._distiller(False)
                distiller.compile(optimizer=keras.optimizers.SGD(1.0))
            finally:
                keras.config.set_dtype_policy("float32")
            distiller.fit(self._cached(), epochs=1, steps_per_epoch=1, verbose=0)
            weights[policy] = distiller.student.get_weights()
        self.assertIsInstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
        initial = _tiny_student().get_weights()
        for mixed, full, start in zip(weights["mixed_float16"], weights["float32"], initial):
            self.assertGreater(np.abs(full - start).max(), 1e-3)
            # float16 keeps 11 significant bits: 1e-3 of updates of ~0.1.
            self.assertAllClose(mixed - start, full - start, atol=2e-3, rtol=1e-2)

    def test_dkd_warms_up_with_the_epoch(self):
        """With a learning rate of 0, the student stays as it is and DKD's
        logged value grows as min(epoch / 4, 1): 1/4, 2/4, 3/4, 1, 1."""
        terms = [("dkd", losses.DKD(4.0, 1.0, 8.0, warmup_epochs=4), 1.0)]
        distiller = self._distiller(False, terms, steps_per_epoch=2)
        distiller.compile(optimizer=keras.optimizers.SGD(0.0))
        history = distiller.fit(
            self._cached().take(2).repeat(), epochs=5, steps_per_epoch=2, verbose=0
        ).history["dkd_loss"]
        self.assertAllClose(np.array(history) / history[-1], [0.25, 0.5, 0.75, 1.0, 1.0])

    def test_label_distributions_give_their_cross_entropy(self):
        one_hot = np.eye(3, dtype=np.float32)[self.labels]
        mixed = 0.7 * one_hot + 0.3 * np.roll(one_hot, 1, axis=0)
        distiller = self._distiller(False)
        distiller.compile(
            optimizer="sgd", metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        )
        logits = self._logits()
        result = distiller.evaluate(
            tf.data.Dataset.from_tensor_slices(((self.images, logits), mixed)).batch(64),
            return_dict=True,
            verbose=0,
        )
        student = distiller.student.predict(self.images, verbose=0)
        ce = keras.losses.sparse_categorical_crossentropy
        expected = 0.7 * ce(self.labels, student, from_logits=True) + 0.3 * ce(
            np.roll(self.labels, 1), student, from_logits=True
        )
        self.assertAllClose(result["student_loss"], np.mean(expected), rtol=1e-5)
        self.assertAllClose(
            result["accuracy"], np.mean(np.argmax(student, 1) == self.labels), atol=1e-6
        )

    def test_rejects_bad_settings(self):
        with self.assertRaisesRegex(ValueError, "alpha"):
            distillation.Distiller(_tiny_student(), KD, alpha=1.5)
        with self.assertRaisesRegex(ValueError, "unique"):
            distillation.Distiller(_tiny_student(), KD + KD, alpha=0.5)
        with self.assertRaisesRegex(ValueError, "steps_per_epoch"):
            distillation.Distiller(_tiny_student(), [("dkd", losses.DKD(), 1.0)], alpha=0.5)

    def test_teacher_logits_mode(self):
        resolve = distillation.resolve_teacher_logits_mode
        self.assertEqual(resolve("auto", random_augmentation=False), "cached")
        self.assertEqual(resolve("auto", random_augmentation=True), "online")
        self.assertEqual(resolve("online", random_augmentation=False), "online")


class HintDistillerTest(tf.test.TestCase):
    """A hint from a teacher's 5-unit layer to the student's 2-unit one,
    through a dense projection the Distiller owns."""

    def test_the_projection_trains_beside_the_student_and_is_not_part_of_it(self):
        teacher = _tiny_student(seed=1, hidden=5)
        student = _tiny_student(seed=2, hidden=2)
        (pair,) = hints.plan([("hidden", "hidden")], teacher, student, "teacher")
        terms = KD + hints.hint_terms([pair], weight=1.0)
        projection = terms[1][1].projection
        distiller = distillation.Distiller(student, terms, alpha=0.5)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (32, 4, 4, 1), dtype=np.uint8)
        rows = hints.TeacherRows(_Adapter(teacher), teacher, [pair])(images)
        self.assertEqual(rows.shape, (32, 3 + 5))
        dataset = tf.data.Dataset.from_tensor_slices(
            ((images, rows), rng.integers(0, 3, 32))
        ).batch(16)
        before = [w.numpy().copy() for w in projection.weights]
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        history = distiller.fit(dataset, epochs=1, verbose=0).history
        self.assertIn("hint_loss", history)
        for weight, start in zip(projection.weights, before):
            self.assertNotAllClose(weight.numpy(), start)
        projection_paths = {w.path for w in projection.weights}
        self.assertEmpty(projection_paths & {w.path for w in student.weights})
        self.assertLen(distiller.trainable_weights, len(student.trainable_weights) + 2)


class ResumeTest(tf.test.TestCase):
    """A run with a hint and a warming-up DKD, backed up after epoch 2 and
    resumed, ends as the uninterrupted run: the projection and the optimiser's
    step count (DKD's epoch) come back with the student."""

    def _fit(self, backup_dir, epochs):
        teacher = _tiny_student(seed=1, hidden=5)
        student = _tiny_student(seed=2, hidden=2)
        (pair,) = hints.plan([("hidden", "hidden")], teacher, student, "teacher")
        terms = [("dkd", losses.DKD(4.0, warmup_epochs=3), 1.0), *hints.hint_terms([pair], 1.0)]
        distiller = distillation.Distiller(student, terms, alpha=0.5, steps_per_epoch=2)
        distiller.build((None, 4, 4, 1))  # as the student stage does, for its backups
        distiller.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (32, 4, 4, 1), dtype=np.uint8)
        rows = hints.TeacherRows(_Adapter(teacher), teacher, [pair])(images)
        dataset = tf.data.Dataset.from_tensor_slices(
            ((images, rows), rng.integers(0, 3, 32))
        ).batch(16)
        records, _ = training.fit_and_restore_best(
            distiller, dataset.repeat(), dataset, epochs=epochs, steps_per_epoch=2,
            log_dir=os.path.join(self.get_temp_dir(), "logs"), backup_dir=backup_dir,
        )
        return records, distiller.get_weights()

    def test_a_resumed_run_ends_as_the_uninterrupted_one(self):
        want_records, want_weights = self._fit(None, epochs=3)
        backup_dir = os.path.join(self.get_temp_dir(), "backup")
        self._fit(backup_dir, epochs=2)
        records, weights = self._fit(backup_dir, epochs=3)
        self.assertLen(weights, len(want_weights))
        for got, want in zip(weights, want_weights):
            self.assertAllClose(got, want, atol=1e-6)
        self.assertAllClose(
            [r["dkd_loss"] for r in records], [r["dkd_loss"] for r in want_records], rtol=1e-5
        )


class _Adapter:
    """A stand-in `TeacherAdapter` for a Keras teacher on uint8 images."""

    def __init__(self, model):
        self.model = type("Served", (), {"num_classes": int(model.outputs[0].shape[-1])})()

    def images(self, images):
        return images

    def as_logits(self, outputs):
        return tf.cast(outputs, tf.float32)


if __name__ == "__main__":
    tf.test.main()
