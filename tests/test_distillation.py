"""The distillation loss against hand-computed values, and the Distiller."""

import math

import keras
import numpy as np
import tensorflow as tf

from kd_tf import data, distillation, logits_cache, pipelines

STUDENT = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], np.float32)
TEACHER = np.array([[3.0, 1.0, -2.0], [-1.0, 0.0, 4.0]], np.float32)
LABELS = np.array([0, 2], np.int64)


def _softmax(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def _hand_loss(temperature, alpha):
    """The loss for STUDENT/TEACHER/LABELS with plain Python floats."""
    losses = []
    for s, t, y in zip(STUDENT.tolist(), TEACHER.tolist(), LABELS.tolist()):
        p = _softmax([v / temperature for v in t])
        q = _softmax([v / temperature for v in s])
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        ce = -math.log(_softmax(s)[y])
        losses.append(alpha * temperature**2 * kl + (1 - alpha) * ce)
    return losses


def _tiny_student(seed=0):
    keras.utils.set_random_seed(seed)
    images = keras.Input((4, 4, 1), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(images)
    x = keras.layers.Flatten()(x)
    return keras.Model(images, keras.layers.Dense(3)(x))


class DistillationLossTest(tf.test.TestCase):
    def test_matches_hand_computed_values(self):
        for temperature, alpha in ((1.0, 0.5), (4.0, 0.7), (10.0, 0.1)):
            got = distillation.distillation_loss(LABELS, STUDENT, TEACHER, temperature, alpha)
            self.assertAllClose(got, _hand_loss(temperature, alpha), rtol=1e-5)

    def test_temperature_squared_scaling(self):
        pure_kd_t1 = distillation.distillation_loss(LABELS, STUDENT, TEACHER, 1.0, 1.0)
        pure_kd_t3 = distillation.distillation_loss(LABELS, STUDENT, TEACHER, 3.0, 1.0)
        kl_t3 = [v / 9.0 for v in _hand_loss(3.0, 1.0)]
        self.assertAllClose(pure_kd_t3 / 9.0, kl_t3, rtol=1e-5)
        self.assertNotAllClose(pure_kd_t1, pure_kd_t3)

    def test_alpha_zero_is_cross_entropy(self):
        got = distillation.distillation_loss(LABELS, STUDENT, TEACHER, 5.0, 0.0)
        expected = keras.losses.sparse_categorical_crossentropy(LABELS, STUDENT, from_logits=True)
        self.assertAllClose(got, expected, rtol=1e-6)

    def test_alpha_one_is_pure_distillation(self):
        got = distillation.distillation_loss(LABELS, STUDENT, TEACHER, 2.0, 1.0)
        other_labels = distillation.distillation_loss(1 - LABELS + 1, STUDENT, TEACHER, 2.0, 1.0)
        self.assertAllClose(got, other_labels)
        self.assertAllClose(got, _hand_loss(2.0, 1.0), rtol=1e-5)

    def test_identical_logits_give_zero_soft_loss(self):
        got = distillation.distillation_loss(LABELS, TEACHER, TEACHER, 4.0, 1.0)
        self.assertAllClose(got, [0.0, 0.0], atol=1e-6)

    def test_gradients_reach_only_the_student(self):
        student = tf.Variable(STUDENT)
        teacher = tf.Variable(TEACHER)
        with tf.GradientTape(persistent=True) as tape:
            loss = tf.reduce_mean(
                distillation.distillation_loss(LABELS, student, teacher, 4.0, 0.7)
            )
        self.assertIsNone(tape.gradient(loss, teacher))
        self.assertGreater(float(tf.reduce_sum(tf.abs(tape.gradient(loss, student)))), 0.0)


class DistillerTest(tf.test.TestCase):
    def setUp(self):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (64, 4, 4, 1), dtype=np.uint8)
        self.labels = rng.integers(0, 3, 64).astype(np.int64)
        self.split = data.Split(self.images, self.labels)
        self.teacher = _tiny_student(seed=1)

    def _distiller(self, online):
        return distillation.Distiller(
            _tiny_student(),
            temperature=4.0,
            alpha=0.7,
            teacher=(lambda x: self.teacher(x, training=False)) if online else None,
        )

    def test_cached_and_online_logits_give_the_same_loss(self):
        cached_logits = self.teacher.predict(self.images, verbose=0)
        cached = self._distiller(online=False)
        online = self._distiller(online=True)
        for model in (cached, online):
            model.compile(optimizer="sgd")
        cached_result = cached.evaluate(
            pipelines.evaluation_dataset(
                self.split, 16, logits=logits_cache.LogitsTable(cached_logits[:, None])
            ),
            return_dict=True,
            verbose=0,
        )
        online_result = online.evaluate(
            pipelines.evaluation_dataset(self.split, 16), return_dict=True, verbose=0
        )
        self.assertAllClose(cached_result["loss"], online_result["loss"], rtol=1e-5)
        expected = np.mean(
            distillation.distillation_loss(
                self.labels, cached.student.predict(self.images, verbose=0), cached_logits, 4.0, 0.7
            )
        )
        self.assertAllClose(cached_result["loss"], expected, rtol=1e-5)

    def test_training_updates_only_the_student(self):
        teacher_before = [w.copy() for w in self.teacher.get_weights()]
        distiller = self._distiller(online=True)
        student_before = [w.copy() for w in distiller.student.get_weights()]
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        distiller.fit(
            pipelines.evaluation_dataset(self.split, 16), epochs=1, verbose=0
        )
        for before, after in zip(teacher_before, self.teacher.get_weights()):
            self.assertAllEqual(before, after)
        changed = [
            not np.array_equal(b, a)
            for b, a in zip(student_before, distiller.student.get_weights())
        ]
        self.assertTrue(all(changed))

    def test_rejects_bad_hyperparameters(self):
        with self.assertRaisesRegex(ValueError, "temperature"):
            distillation.Distiller(_tiny_student(), temperature=0.0, alpha=0.5)
        with self.assertRaisesRegex(ValueError, "alpha"):
            distillation.Distiller(_tiny_student(), temperature=1.0, alpha=1.5)

    def test_teacher_logits_mode(self):
        resolve = distillation.resolve_teacher_logits_mode
        self.assertEqual(resolve("auto", random_augmentation=False), "cached")
        self.assertEqual(resolve("auto", random_augmentation=True), "online")
        self.assertEqual(resolve("online", random_augmentation=False), "online")


if __name__ == "__main__":
    tf.test.main()
