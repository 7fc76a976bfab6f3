"""Knowledge distillation (Hinton et al., 2015): the loss and the `Distiller`.

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(y, s)

with teacher logits `t`, student logits `s`, hard labels `y` and temperature
`T`. The T^2 factor keeps the soft term's gradients on the same scale as the
hard term's whatever the temperature.

Usage:

```python
distiller = Distiller(student, temperature=4.0, alpha=0.9, teacher=teacher_fn)
distiller.compile(optimizer=keras.optimizers.Adam(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
distiller.fit(images_and_labels)            # online: the teacher runs every step
distiller = Distiller(student, temperature=4.0, alpha=0.9)
distiller.fit(images_logits_and_labels)     # cached: ((images, teacher_logits), labels)
```
"""

import keras
import tensorflow as tf
from keras import ops

TEACHER_LOGITS_MODES = ("auto", "cached", "online")


def distillation_loss(labels, student_logits, teacher_logits, temperature, alpha):
    """Per-example distillation loss.

    Args:
        labels: int tensor `[batch]`, the hard labels.
        student_logits: float tensor `[batch, classes]`.
        teacher_logits: float tensor `[batch, classes]`; treated as a constant.
        temperature: softening temperature T > 0.
        alpha: weight of the soft (teacher) term, in [0, 1].

    Returns:
        float32 tensor `[batch]`:
        `alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(y, s)`.
    """
    student_logits = ops.cast(student_logits, "float32")
    teacher_logits = ops.stop_gradient(ops.cast(teacher_logits, "float32"))
    soft_targets = ops.softmax(teacher_logits / temperature, axis=-1)
    soft_log_targets = ops.log_softmax(teacher_logits / temperature, axis=-1)
    soft_log_predictions = ops.log_softmax(student_logits / temperature, axis=-1)
    kl = ops.sum(soft_targets * (soft_log_targets - soft_log_predictions), axis=-1)
    ce = keras.losses.sparse_categorical_crossentropy(labels, student_logits, from_logits=True)
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce


class Distiller(keras.Model):
    """Trains `student` on hard labels and a teacher's softened outputs.

    Data elements are `((images, teacher_logits), labels)` when the teacher's
    logits are cached, or `(images, labels)` when `teacher` is given and called
    on every batch (online). The model's output is the student's logits;
    `compute_loss` is `distillation_loss` averaged over the batch, and Keras's
    `fit` does the rest: gradients, loss scaling, the `loss` metric, and the
    compiled metrics (compile with
    `metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")]`).
    As with Keras's own losses, the loss is scaled by 1 / replicas, so
    `tf.distribute` strategies give the same updates as one device.

    Args:
        student: `keras.Model` from images to logits; the model being trained.
        temperature: T > 0.
        alpha: weight of the soft term, in [0, 1].
        teacher: optional callable `images -> logits` for the online mode; it
            is never trained.
    """

    def __init__(self, student, temperature, alpha, teacher=None, **kwargs):
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.student = student
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def call(self, inputs, training=False):
        images = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        return self.student(images, training=training)

    def _teacher_logits(self, features):
        if isinstance(features, (tuple, list)):
            return features[1]
        if self.teacher is None:
            raise ValueError(
                "this Distiller has no teacher: feed ((images, teacher_logits), labels) "
                "or pass teacher= for the online mode"
            )
        return self.teacher(features)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The batch's mean `distillation_loss`, plus the student's own losses
        (e.g. regularisers), scaled for distribution."""
        per_example = distillation_loss(
            y, y_pred, self._teacher_logits(x), self.temperature, self.alpha
        )
        loss = ops.mean(per_example)
        if self.student.losses:
            loss = loss + ops.sum(self.student.losses)
        # As Keras scales its compiled losses (`fit` unscales the `loss` metric).
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return loss if replicas == 1 else loss * (1.0 / replicas)


def resolve_teacher_logits_mode(mode, random_augmentation):
    """Picks how the teacher's logits reach the `Distiller`.

    Args:
        mode: "auto", "cached" or "online".
        random_augmentation: whether the input pipeline draws new random
            distortions every step (then the images differ each epoch and the
            teacher must see each of them).

    Returns:
        "cached" or "online".
    """
    if mode not in TEACHER_LOGITS_MODES:
        raise ValueError(f"teacher_logits must be one of {TEACHER_LOGITS_MODES}, got {mode!r}")
    if mode == "auto":
        return "online" if random_augmentation else "cached"
    return mode
