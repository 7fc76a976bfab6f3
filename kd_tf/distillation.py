"""Knowledge distillation: the `Distiller`, a `keras.Model` whose `train_step`
combines the hard-label loss with weighted distillation terms
(`kd_tf.distillation_losses`):

    loss = (1 - alpha) * CE(y, s) + alpha * sum_i w_i * L_i

The teacher's outputs reach it cached, in the data (`((images, teacher),
labels)`), or online, from a `teacher` callable run on every batch outside
the gradient tape. Either way they are rows `[batch, width]`: the logits
(of each teacher of an ensemble, side by side), followed by the features of
the hint terms (`kd_tf.hints.OutputLayout`). An ensemble's terms see its
teachers' logits `[batch, teachers, classes]`, which
`distillation_losses.teacher_distribution` averages into one target.

Usage:

```python
terms = [("kd", distillation_losses.KD(temperature=4.0), 1.0)]
distiller = Distiller(student, terms, alpha=0.9, teacher=teacher_fn)
distiller.compile(optimizer=keras.optimizers.Adam(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
distiller.fit(images_and_labels)            # online: the teacher runs every step
distiller = Distiller(student, terms, alpha=0.9)
distiller.fit(images_teacher_and_labels)    # cached: ((images, teacher_logits), labels)
```
"""

import keras
import tensorflow as tf
from keras import ops

from kd_tf import choices
from kd_tf import hints as hints_lib
from kd_tf.distillation_losses import DKD, Hint

TEACHER_LOGITS_MODES = choices.TEACHER_LOGITS_MODES


class Distiller(keras.Model):
    """Trains `student` on hard labels and a teacher's outputs (see the module doc).

    `train_step` runs the online teacher before the `GradientTape`, so the
    tape records nothing of it; inside the tape, the student's forward pass
    and the loss, scaled by 1 / replicas (as Keras scales its compiled
    losses, so `tf.distribute` strategies give the updates of one device) and
    by the optimiser's loss scale (mixed float16). The epoch log holds `loss`,
    `student_loss` (the hard-label cross-entropy), `distillation_loss`
    (`sum_i w_i L_i`), one `<name>_loss` per term (unweighted) and the
    compiled metrics (compile with
    `metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")]`).

    Labels are int `[batch]`, or float `[batch, classes]` distributions
    (mixup): the hard term is then their cross-entropy, and the accuracy and
    DKD's target class take their most likely class.

    Args:
        student: `keras.Model` from images to logits; the model being trained.
        terms: list of `(name, term, weight)`, the `distillation_losses`
            terms; names are unique.
        alpha: weight of the distillation terms, in [0, 1].
        teacher: optional callable `images -> teacher rows` for the online mode;
            it is never trained (a Keras teacher is frozen, as Keras's own
            `Distiller` does).
        steps_per_epoch: steps in an epoch, for a warming-up `DKD` (the epoch
            is the optimiser's step count over it).
        teachers: the teachers whose logits the rows hold side by side (an
            ensemble's target is their mean distribution).
    """

    def __init__(
        self, student, terms, alpha, teacher=None, steps_per_epoch=None, teachers=1, **kwargs
    ):
        super().__init__(**kwargs)
        _check_terms(terms, alpha, steps_per_epoch, teachers)
        self.student = student
        if isinstance(teacher, keras.Layer):
            teacher.trainable = False
        self.teacher = teacher
        self.alpha = float(alpha)
        self.steps_per_epoch = steps_per_epoch
        self.terms = tuple(terms)
        self._hints = [term for _, term, _ in terms if isinstance(term, Hint)]
        self.projections = [hint.projection for hint in self._hints if hint.projection is not None]
        self._layout = hints_lib.OutputLayout(
            int(student.outputs[0].shape[-1]), [hint.teacher_shape for hint in self._hints], teachers
        )
        self._student_outputs = hints_lib.student_extractor(student, self._hints)
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.term_trackers = [keras.metrics.Mean(name=f"{name}_loss") for name, _, _ in terms]

    def call(self, inputs, training=False):
        images = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        return self.student(images, training=training)

    def train_step(self, data):
        features, labels = data
        images, teacher_rows = self._images_and_teacher(features)
        with tf.GradientTape() as tape:
            logits, losses = self._forward(images, labels, teacher_rows, training=True)
            loss = self.optimizer.scale_loss(_scaled_for_replicas(losses["loss"]))
        weights = self.trainable_weights
        self.optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
        return self._metrics_result(images, labels, logits, losses)

    def test_step(self, data):
        features, labels = data
        images, teacher_rows = self._images_and_teacher(features)
        logits, losses = self._forward(images, labels, teacher_rows, training=False)
        return self._metrics_result(images, labels, logits, losses)

    def _images_and_teacher(self, features):
        """`(images, teacher rows)`: cached in the data, or the online
        teacher's (run here, before any tape)."""
        if isinstance(features, (tuple, list)):
            return features[0], features[1]
        if self.teacher is None:
            raise ValueError(
                "this Distiller has no teacher: feed ((images, teacher_logits), labels) "
                "or pass teacher= for the online mode"
            )
        return features, ops.stop_gradient(self.teacher(features))

    def _forward(self, images, labels, teacher_rows, training):
        """The student's logits and the batch's losses (a dict of scalars,
        `loss` the total)."""
        outputs = self._student_outputs(images, training=training)
        logits, student_features = outputs[0], outputs[1:]
        teacher_logits, teacher_features = self._layout.split(teacher_rows)
        hard_labels = _hard_labels(labels)
        student_loss = _cross_entropy(labels, logits)
        losses, features = {"student_loss": student_loss}, iter(zip(teacher_features, student_features))
        epoch = self._epoch(training)
        distillation_loss = 0.0
        for name, term, weight in self.terms:
            if isinstance(term, Hint):
                value = term.compute_loss(*next(features))
            else:
                value = term.compute_loss(teacher_logits, logits, labels=hard_labels, epoch=epoch)
            losses[name] = value
            distillation_loss = distillation_loss + weight * value
        losses["distillation_loss"] = distillation_loss
        loss = (1.0 - self.alpha) * student_loss + self.alpha * distillation_loss
        if self.student.losses:
            loss = loss + ops.sum(self.student.losses)
        losses["loss"] = loss
        return logits, losses

    def _epoch(self, training):
        """The epoch (from 1) of this step: the optimiser's step count over
        `steps_per_epoch` (validation: of the last training step)."""
        if self.steps_per_epoch is None:
            return None
        steps = ops.cast(self.optimizer.iterations, "float32") - (0.0 if training else 1.0)
        return ops.floor(ops.maximum(steps, 0.0) / self.steps_per_epoch) + 1.0

    def _metrics_result(self, images, labels, logits, losses):
        batch = ops.shape(images)[0]
        self._loss_tracker.update_state(losses["loss"], sample_weight=batch)
        self.student_loss_tracker.update_state(losses["student_loss"], sample_weight=batch)
        self.distillation_loss_tracker.update_state(losses["distillation_loss"], sample_weight=batch)
        for (name, _, _), tracker in zip(self.terms, self.term_trackers):
            tracker.update_state(losses[name], sample_weight=batch)
        return self.compute_metrics(images, _hard_labels(labels), logits)

    def term_settings(self):
        """The report's record of the terms: each one's name, weight, class
        and `get_config`."""
        return [
            {"name": name, "weight": weight, "loss": type(term).__name__, **term.get_config()}
            for name, term, weight in self.terms
        ]


def _check_terms(terms, alpha, steps_per_epoch, teachers):
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    names = [name for name, _, _ in terms]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"terms must be a non-empty list with unique names, got {names}")
    warming = [name for name, term, _ in terms if isinstance(term, DKD) and term.warmup_epochs]
    if warming and not steps_per_epoch:
        raise ValueError(f"{warming[0]} warms up over epochs: pass steps_per_epoch")
    if teachers > 1 and any(isinstance(term, Hint) for _, term, _ in terms):
        raise ValueError(f"hints read one teacher's layers, got {teachers} teachers")


def _scaled_for_replicas(loss):
    """`loss` / replicas, as Keras scales its compiled losses (`tf.distribute`
    sums the replicas' gradients)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss * (1.0 / replicas)


def _hard_labels(labels):
    """Class indices: the labels, or the most likely class of distributions."""
    if labels.dtype.is_floating:
        return ops.argmax(labels, axis=-1)
    return labels


def _cross_entropy(labels, logits):
    """The batch's mean cross-entropy of int labels or label distributions,
    in float32."""
    logits = ops.cast(logits, "float32")
    if labels.dtype.is_floating:
        per_example = keras.losses.categorical_crossentropy(labels, logits, from_logits=True)
    else:
        per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    return ops.mean(per_example)


def resolve_teacher_logits_mode(mode, random_augmentation):
    """Picks how the teacher's logits reach the `Distiller`.

    Args:
        mode: "auto", "cached" or "online".
        random_augmentation: whether the input pipeline shows new images every
            step (distortions drawn afresh, or mixup): then the teacher must
            see each of them.

    Returns:
        "cached" or "online".
    """
    if mode not in TEACHER_LOGITS_MODES:
        raise ValueError(f"teacher_logits must be one of {TEACHER_LOGITS_MODES}, got {mode!r}")
    if mode == "auto":
        return "online" if random_augmentation else "cached"
    return mode
