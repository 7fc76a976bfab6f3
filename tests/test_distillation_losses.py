"""Each distillation loss term against a NumPy reference on a fixed batch:
values, and gradients (central differences of the float64 reference), plus
the property each term's key step gives."""

import keras
import numpy as np
import tensorflow as tf

from kd_tf import distillation_losses as losses

RNG = np.random.default_rng(7)
# A fixed batch: 6 examples, 5 classes, logits of both signs and sizes.
STUDENT = (RNG.normal(size=(6, 5)) * 2.0).astype(np.float32)
TEACHER = (RNG.normal(size=(6, 5)) * 3.0).astype(np.float32)
LABELS = np.array([0, 4, 2, 2, 1, 3], np.int64)
TEMPERATURES = (1.0, 4.0)
# float32 against float64: the losses are sums of a few dozen terms of size
# ~1, so their float32 rounding is ~1e-6 relative.
RTOL = 1e-5
# Central differences with step 1e-4 on the float64 reference are exact to
# ~1e-8; the float32 gradients are good to ~1e-6 of their size.
GRAD_ATOL = 2e-5


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _kl(p, q):
    return np.sum(p * np.log(p / q), axis=-1)


def kd_reference(s, t, temperature):
    p, q = _softmax(t / temperature), _softmax(s / temperature)
    return temperature**2 * np.mean(_kl(p, q))


def dkd_reference(s, t, y, temperature, alpha, beta, factor=1.0):
    """As the paper writes it: TCKD on [p_y, 1 - p_y]; NCKD on the softmax of
    the non-target logits (the target's column deleted)."""
    tckd, nckd = [], []
    for s_b, t_b, y_b in zip(s, t, y):
        p, q = _softmax(t_b / temperature), _softmax(s_b / temperature)
        tckd.append(_kl(np.array([p[y_b], 1 - p[y_b]]), np.array([q[y_b], 1 - q[y_b]])))
        others = np.delete(np.arange(len(s_b)), y_b)
        nckd.append(_kl(_softmax(t_b[others] / temperature), _softmax(s_b[others] / temperature)))
    return factor * temperature**2 * (alpha * np.mean(tckd) + beta * np.mean(nckd))


def _pearson(a, b):
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)


def dist_reference(s, t, temperature, beta, gamma):
    """The authors' code: inter over each example's classes, intra over each
    class's column across the batch."""
    y_s, y_t = _softmax(s / temperature), _softmax(t / temperature)
    inter = 1 - _pearson(y_s, y_t).mean()
    intra = 1 - _pearson(y_s.T, y_t.T).mean()
    return temperature**2 * (beta * inter + gamma * intra)


def numeric_gradient(f, x, step=1e-4):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        grad[index] = (f(up) - f(down)) / (2 * step)
    return grad


def value_and_gradient(term, student=STUDENT, teacher=TEACHER, **kwargs):
    """The term's float32 value and its gradient w.r.t. the student's logits
    (and, to show it is none, w.r.t. the teacher's)."""
    student, teacher = tf.Variable(student), tf.Variable(teacher)
    with tf.GradientTape(persistent=True) as tape:
        value = term.compute_loss(teacher, student, **kwargs)
    return float(value), tape.gradient(value, student).numpy(), tape.gradient(value, teacher)


class ReferenceTest(tf.test.TestCase):
    def assert_matches(self, term, reference, **kwargs):
        value, gradient, teacher_gradient = value_and_gradient(term, **kwargs)
        self.assertAllClose(value, reference(STUDENT.astype(np.float64)), rtol=RTOL, atol=0)
        self.assertAllClose(gradient, numeric_gradient(reference, STUDENT), atol=GRAD_ATOL, rtol=0)
        self.assertIsNone(teacher_gradient, "the teacher's outputs are a constant")

    def test_kd(self):
        for temperature in TEMPERATURES:
            with self.subTest(temperature=temperature):
                self.assert_matches(
                    losses.KD(temperature), lambda s: kd_reference(s, TEACHER, temperature)
                )

    def test_dkd(self):
        for temperature, alpha, beta in ((1.0, 1.0, 8.0), (4.0, 0.5, 2.0), (4.0, 0.0, 1.0)):
            with self.subTest(temperature=temperature, alpha=alpha, beta=beta):
                self.assert_matches(
                    losses.DKD(temperature, alpha, beta, warmup_epochs=0),
                    lambda s: dkd_reference(s, TEACHER, LABELS, temperature, alpha, beta),
                    labels=LABELS,
                )

    def test_dkd_warms_up_over_its_epochs(self):
        dkd = losses.DKD(4.0, 1.0, 8.0, warmup_epochs=20)
        for epoch, factor in ((1.0, 0.05), (10.0, 0.5), (20.0, 1.0), (35.0, 1.0)):
            with self.subTest(epoch=epoch):
                self.assert_matches(
                    dkd,
                    lambda s: dkd_reference(s, TEACHER, LABELS, 4.0, 1.0, 8.0, factor),
                    labels=LABELS,
                    epoch=epoch,
                )

    def test_dist(self):
        for temperature, beta, gamma in ((1.0, 1.0, 1.0), (4.0, 1.0, 1.0), (4.0, 0.0, 2.0)):
            with self.subTest(temperature=temperature, beta=beta, gamma=gamma):
                self.assert_matches(
                    losses.DIST(temperature, beta, gamma),
                    lambda s: dist_reference(s, TEACHER, temperature, beta, gamma),
                )

    def test_hint_with_a_dense_projection(self):
        keras.utils.set_random_seed(0)
        projection = keras.layers.Dense(3)
        projection.build((None, 5))
        kernel, bias = (w.numpy().astype(np.float64) for w in projection.weights)
        features = TEACHER[:, :3]

        def reference(s):
            return np.mean((s @ kernel + bias - features) ** 2)

        self.assert_matches(
            losses.Hint("t", "s", projection, teacher_shape=(3,)),
            reference,
            teacher=features,
        )


class KeyStepTest(tf.test.TestCase):
    """The property that each term's key step gives (each fails when that
    step is planted wrong)."""

    def test_nckd_ignores_the_students_target_logit(self):
        _, gradient, _ = value_and_gradient(
            losses.DKD(4.0, alpha=0.0, beta=1.0, warmup_epochs=0), labels=LABELS
        )
        target_gradient = gradient[np.arange(len(LABELS)), LABELS]
        self.assertAllClose(target_gradient, np.zeros(len(LABELS)), atol=1e-7)
        self.assertGreater(np.abs(gradient).sum(), 1e-3)

    def test_dist_intra_is_per_class_across_the_batch(self):
        # A student whose every class column is an affine function of the
        # teacher's (per class) correlates perfectly across the batch; its
        # rows do not.
        y_t = _softmax(TEACHER / 4.0)
        y_s = 0.5 * y_t + 0.5 * y_t.mean(axis=0, keepdims=True)
        y_s /= y_s.sum(axis=1, keepdims=True)
        self.assertAllClose(dist_reference(np.log(y_s) * 4.0, TEACHER, 4.0, 0.0, 1.0), 0.0, atol=1e-2)
        value, _, _ = value_and_gradient(
            losses.DIST(4.0, beta=0.0, gamma=1.0), student=(np.log(y_s) * 4.0).astype(np.float32)
        )
        self.assertAllClose(value, dist_reference(np.log(y_s) * 4.0, TEACHER, 4.0, 0.0, 1.0), rtol=1e-4)
        self.assertNotAllClose(value, dist_reference(np.log(y_s) * 4.0, TEACHER, 4.0, 1.0, 0.0))


class ConfigTest(tf.test.TestCase):
    def test_get_config_round_trips(self):
        for term in (
            losses.KD(3.0),
            losses.DKD(4.0, 1.0, 2.0, 5),
            losses.DIST(2.0, 1.0, 0.5),
        ):
            with self.subTest(term=type(term).__name__):
                self.assertEqual(type(term)(**term.get_config()).get_config(), term.get_config())

    def test_rejects_bad_settings(self):
        with self.assertRaisesRegex(ValueError, "temperature"):
            losses.KD(0.0)
        with self.assertRaisesRegex(ValueError, "beta"):
            losses.DKD(4.0, 1.0, -1.0)
        with self.assertRaisesRegex(ValueError, "gamma"):
            losses.DIST(4.0, 1.0, -0.5)
        with self.assertRaisesRegex(ValueError, "labels"):
            losses.DKD(4.0).compute_loss(TEACHER, STUDENT)


if __name__ == "__main__":
    tf.test.main()
