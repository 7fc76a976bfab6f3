"""Knowledge distillation (Hinton et al., 2015): the loss and the `Distiller`.

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(y, s)

with teacher logits `t`, student logits `s`, hard labels `y` and temperature
`T`. The T^2 factor keeps the soft term's gradients on the same scale as the
hard term's whatever the temperature.

Usage:

```python
distiller = Distiller(student, temperature=4.0, alpha=0.9, teacher=teacher_fn)
distiller.compile(optimizer=keras.optimizers.Adam())
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
    on every batch (online). Both `train_step` and `test_step` compute
    `distillation_loss`; `accuracy` is the student's. The loss is averaged over
    the global batch across replicas, so `tf.distribute` strategies give the
    same updates as one device.

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
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_metric]

    def call(self, inputs, training=False):
        # Under a tf.distribute strategy, fit first calls the model on the
        # features of one batch, which carry the cached teacher logits.
        images = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        return self.student(images, training=training)

    def _unpack(self, data):
        features, labels = data
        if isinstance(features, (tuple, list)):
            images, teacher_logits = features
        elif self.teacher is None:
            raise ValueError(
                "this Distiller has no teacher: feed ((images, teacher_logits), labels) "
                "or pass teacher= for the online mode"
            )
        else:
            images = features
            teacher_logits = self.teacher(images)
        return images, labels, teacher_logits

    def _loss(self, labels, student_logits, teacher_logits):
        per_example = distillation_loss(
            labels, student_logits, teacher_logits, self.temperature, self.alpha
        )
        return ops.mean(per_example)

    def _update_metrics(self, loss, labels, student_logits):
        self.loss_tracker.update_state(loss, sample_weight=ops.shape(labels)[0])
        self.accuracy_metric.update_state(labels, student_logits)
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, data):
        images, labels, teacher_logits = self._unpack(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            student_logits = self.student(images, training=True)
            loss = self._loss(labels, student_logits, teacher_logits)
            regularization = ops.sum(self.student.losses) if self.student.losses else 0.0
            replica_loss = (loss + regularization) / replicas
        variables = self.student.trainable_variables
        gradients = tape.gradient(replica_loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._update_metrics(loss, labels, student_logits)

    def test_step(self, data):
        images, labels, teacher_logits = self._unpack(data)
        student_logits = self.student(images, training=False)
        loss = self._loss(labels, student_logits, teacher_logits)
        return self._update_metrics(loss, labels, student_logits)


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
