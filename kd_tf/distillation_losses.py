"""The distillation loss terms, small objects combined by weights.

Every term is a `keras.distillation.DistillationLoss` with `get_config`, and
returns a float32 scalar for a batch (see each class for its formula). A
`Distiller` trains on

    loss = (1 - alpha) * CE(y, s) + alpha * sum_i w_i * L_i

with hard labels `y`, student logits `s` and the weighted terms `L_i`
(`--distillation_loss=kd:0.5,dist:0.5`; hints are added with the weight
`--hint_weight`, see `kd_tf.hints`).

The logit terms (`KD`, `DKD`, `DIST`) see the teacher through one seam,
`teacher_distribution`: the teacher's softened class distribution, as
probabilities and log-probabilities, where the teachers of an ensemble
(logits `[batch, teachers, classes]`) are averaged into one distribution.

Usage:

```python
terms = [(KD(temperature=4.0), 0.5), (DIST(temperature=4.0), 0.5)]
loss = sum(w * term.compute_loss(teacher_logits, student_logits, labels=labels)
           for term, w in terms)
terms = logit_terms(config.distillation)   # from --distillation_loss and its settings
```
"""

import keras
from keras import ops

from kd_tf import choices

LOGIT_LOSSES = choices.LOGIT_LOSSES
# Added to the logits of a class to leave it out of a softmax: exp of it is 0
# in float32, and it stays finite, so no NaN reaches a gradient.
_LEFT_OUT = -1e4
# DIST's guard against a zero norm (as in the authors' code).
_PEARSON_EPSILON = 1e-8


def teacher_distribution(teacher_logits, temperature):
    """The teacher's class distribution at temperature T, `(p, log p)`; for
    an ensemble, the mean of its teachers' distributions.

    With several teachers (Hinton et al. 2015, section 4) the target is the
    arithmetic mean of their softened probabilities,

        p = mean_k softmax(t_k / T),   log p = m + log mean_k exp(log softmax(t_k / T) - m)

    (m the largest of the teachers' log-probabilities, so that the log
    stays finite however sure they are; two teachers that agree give
    exactly their own `(p, log p)`). Every logit term reads the teacher
    through this function, so KD, DKD and DIST all take the mean
    distribution as one teacher's. For KD this equals the sum of
    per-teacher KL terms (big_vision's distillation) up to a constant and
    the factor K (the number of teachers), for any student distribution q:

        sum_k KL(p_k || q) = K KL(p || q) + sum_k KL(p_k || p)

    (the last sum holds the teachers alone, so the student's gradients are
    K times those of KL(p || q)).
    DKD splits the mean distribution into its target and non-target
    parts, and DIST correlates with the mean distribution.

    Args:
        teacher_logits: float `[batch, classes]`, or `[batch, teachers,
            classes]` for an ensemble; treated as a constant.
        temperature: T > 0.

    Returns:
        float32 `(p, log p)`, each `[batch, classes]`.
    """
    scaled = ops.stop_gradient(ops.cast(teacher_logits, "float32")) / temperature
    if len(scaled.shape) == 2:
        return ops.softmax(scaled, axis=-1), ops.log_softmax(scaled, axis=-1)
    # Teacher by teacher, so that each sees the kernels of one teacher's
    # `[batch, classes]`: the float32 rounding of a softmax depends on the shape.
    each = [teacher_distribution(scaled[:, k], 1.0) for k in range(scaled.shape[1])]
    log_p = ops.stack([log_p for _, log_p in each], axis=1)
    top = ops.max(log_p, axis=1)
    mean_log_p = top + ops.log(ops.mean(ops.exp(log_p - top[:, None, :]), axis=1))
    return ops.mean(ops.stack([p for p, _ in each], axis=1), axis=1), mean_log_p


def _student_log_probabilities(student_logits, temperature):
    return ops.log_softmax(ops.cast(student_logits, "float32") / temperature, axis=-1)


def _check(temperature, **weights):
    """Raises `ValueError` unless `temperature` > 0 and every weight >= 0."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    for name, value in weights.items():
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


class KD(keras.distillation.DistillationLoss):
    """Hinton et al. (2015): the T^2-scaled KL divergence of the student's
    softened distribution from the teacher's, averaged over the batch:

        L = T^2 * mean_b KL(softmax(t_b / T) || softmax(s_b / T))

    The T^2 factor keeps the gradients on the scale of the hard term's
    whatever the temperature.

    Usage:

    ```python
    loss = KD(temperature=4.0).compute_loss(teacher_logits, student_logits)
    ```
    """

    def __init__(self, temperature=4.0):
        _check(temperature)
        self.temperature = float(temperature)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        p, log_p = teacher_distribution(teacher_outputs, self.temperature)
        log_q = _student_log_probabilities(student_outputs, self.temperature)
        kl = ops.sum(p * (log_p - log_q), axis=-1)
        return self.temperature**2 * ops.mean(kl)

    def get_config(self):
        return {"temperature": self.temperature}


def _kl(log_p, log_q, mask=None):
    """sum_j exp(log_p_j) (log_p_j - log_q_j) per row, over the classes where
    `mask` is True (all without it)."""
    terms = ops.exp(log_p) * (log_p - log_q)
    if mask is not None:
        terms = ops.where(mask, terms, 0.0)
    return ops.sum(terms, axis=-1)


def _target_split(log_p, target):
    """`(log p_target, log (1 - p_target), log of the non-target
    distribution)` of log-probabilities `log_p` `[batch, classes]`, for the
    bool one-hot `target`; computed from log-probabilities, so they stay
    finite however sure the distribution is."""
    log_target = ops.sum(ops.where(target, log_p, 0.0), axis=-1)
    log_rest = ops.logsumexp(ops.where(target, _LEFT_OUT, log_p), axis=-1)
    return log_target, log_rest, log_p - log_rest[:, None]


class DKD(keras.distillation.DistillationLoss):
    """Decoupled KD (Zhao et al., CVPR 2022): KD split into the target class
    term (TCKD) and the non-target classes term (NCKD), weighted apart and
    warmed up over the first epochs:

        L = min(epoch / warmup_epochs, 1) * (alpha * TCKD + beta * NCKD)
        TCKD = T^2 * mean_b KL([p_y, 1 - p_y] || [q_y, 1 - q_y])
        NCKD = T^2 * mean_b KL(p_{-y} || q_{-y})

    with p = softmax(t / T), q = softmax(s / T), y the target class and
    p_{-y} the distribution over the other classes (p renormalised with the
    target left out). `epoch` counts from 1; `warmup_epochs=0` never warms up.
    The paper's CIFAR settings: T = 4, alpha = 1, beta = 8 (2 for
    similar-capacity pairs), 20 warm-up epochs, with the hard term weighted
    as much as DKD (`--alpha=0.5` here).

    Usage:

    ```python
    dkd = DKD(temperature=4.0, alpha=1.0, beta=8.0, warmup_epochs=20)
    loss = dkd.compute_loss(teacher_logits, student_logits, labels=labels, epoch=3.0)
    ```
    """

    def __init__(self, temperature=4.0, alpha=1.0, beta=8.0, warmup_epochs=20):
        _check(temperature, alpha=alpha, beta=beta, warmup_epochs=warmup_epochs)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.warmup_epochs = int(warmup_epochs)

    def warmup(self, epoch):
        """The warm-up factor `min(epoch / warmup_epochs, 1)` (1 without warm-up)."""
        if not self.warmup_epochs:
            return 1.0
        return ops.minimum(ops.cast(epoch, "float32") / self.warmup_epochs, 1.0)

    def compute_loss(self, teacher_outputs, student_outputs, labels=None, epoch=None, **kwargs):
        if labels is None or (epoch is None and self.warmup_epochs):
            raise ValueError("DKD needs the labels and, to warm up, the epoch")
        _, log_p = teacher_distribution(teacher_outputs, self.temperature)
        log_q = _student_log_probabilities(student_outputs, self.temperature)
        target = ops.cast(ops.one_hot(labels, ops.shape(log_q)[-1]), "bool")
        t_target, t_rest, t_others = _target_split(log_p, target)
        s_target, s_rest, s_others = _target_split(log_q, target)
        tckd = _kl(ops.stack([t_target, t_rest], -1), ops.stack([s_target, s_rest], -1))
        nckd = _kl(t_others, s_others, ops.logical_not(target))
        scale = self.temperature**2
        return self.warmup(epoch) * scale * (
            self.alpha * ops.mean(tckd) + self.beta * ops.mean(nckd)
        )

    def get_config(self):
        return {
            "temperature": self.temperature,
            "alpha": self.alpha,
            "beta": self.beta,
            "warmup_epochs": self.warmup_epochs,
        }


def _pearson_per_row(a, b):
    """Pearson correlation of each row of `a` with the same row of `b`."""
    a = a - ops.mean(a, axis=-1, keepdims=True)
    b = b - ops.mean(b, axis=-1, keepdims=True)
    norms = ops.sqrt(ops.sum(a * a, axis=-1)) * ops.sqrt(ops.sum(b * b, axis=-1))
    return ops.sum(a * b, axis=-1) / (norms + _PEARSON_EPSILON)


class DIST(keras.distillation.DistillationLoss):
    """DIST (Huang et al., NeurIPS 2022): matches the relations of the
    predictions rather than their values, with Pearson correlations:

        L = T^2 * (beta * inter + gamma * intra)
        inter = 1 - mean_b pearson(y_s[b, :], y_t[b, :])   (each example's classes)
        intra = 1 - mean_c pearson(y_s[:, c], y_t[:, c])   (each class across the batch)

    with y_s = softmax(s / T), y_t = softmax(t / T). The intra term
    correlates over the batch, so under `tf.distribute` it sees each
    replica's share of it. The paper's small-image settings: T = 4,
    beta = gamma = 1, with the hard term weighted as much (`--alpha=0.5`).

    Usage:

    ```python
    loss = DIST(temperature=4.0, beta=1.0, gamma=1.0).compute_loss(teacher_logits, student_logits)
    ```
    """

    def __init__(self, temperature=4.0, beta=1.0, gamma=1.0):
        _check(temperature, beta=beta, gamma=gamma)
        self.temperature = float(temperature)
        self.beta = float(beta)
        self.gamma = float(gamma)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        y_t, _ = teacher_distribution(teacher_outputs, self.temperature)
        y_s = ops.exp(_student_log_probabilities(student_outputs, self.temperature))
        inter = 1.0 - ops.mean(_pearson_per_row(y_s, y_t))
        intra = 1.0 - ops.mean(_pearson_per_row(ops.transpose(y_s), ops.transpose(y_t)))
        return self.temperature**2 * (self.beta * inter + self.gamma * intra)

    def get_config(self):
        return {"temperature": self.temperature, "beta": self.beta, "gamma": self.gamma}


class Hint(keras.distillation.DistillationLoss):
    """A FitNets hint (Romero et al., 2015): the student's features at
    `student_layer`, through a learned `projection` where the shapes differ,
    regress the teacher's at `teacher_layer`:

        L = mean_{b, i} (P(f_s)[b, i] - f_t[b, i])^2

    `projection` (a Keras layer, None for equal shapes) trains with the
    student but is no part of it: the `Distiller` owns it, the export never
    sees it. `teacher_shape` (without the batch) tells the `Distiller` where
    the features lie in the teacher's outputs. `kd_tf.hints.hint_terms`
    picks the layers and builds the projection.

    Usage:

    ```python
    hint = Hint("fc1", "fc2", keras.layers.Dense(256), teacher_shape=(256,))
    loss = hint.compute_loss(teacher_features, student_features)
    ```
    """

    def __init__(self, teacher_layer, student_layer, projection=None, teacher_shape=None):
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer
        self.projection = projection
        self.teacher_shape = None if teacher_shape is None else tuple(teacher_shape)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        student = ops.cast(student_outputs, "float32")
        if self.projection is not None:
            student = ops.cast(self.projection(student), "float32")
        teacher = ops.stop_gradient(ops.cast(teacher_outputs, "float32"))
        return ops.mean(ops.square(student - teacher))

    def get_config(self):
        return {
            "teacher_layer": self.teacher_layer,
            "student_layer": self.student_layer,
            "projection": None if self.projection is None else type(self.projection).__name__,
            "teacher_shape": None if self.teacher_shape is None else list(self.teacher_shape),
        }


def logit_terms(distillation):
    """The weighted logit terms of `--distillation_loss`.

    Args:
        distillation: a `config.DistillationConfig` (`distillation_loss`,
            `temperature` and each loss's own settings).

    Returns:
        A list of `(name, term, weight)`.
    """
    build = {
        "kd": lambda: KD(distillation.temperature),
        "dkd": lambda: DKD(
            distillation.temperature,
            distillation.dkd_alpha,
            distillation.dkd_beta,
            distillation.dkd_warmup_epochs,
        ),
        "dist": lambda: DIST(distillation.temperature, distillation.dist_beta, distillation.dist_gamma),
    }
    return [(name, build[name](), float(weight)) for name, weight in distillation.distillation_loss]

