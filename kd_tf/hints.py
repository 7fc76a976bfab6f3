"""Feature hints: which teacher layer teaches which student layer, the
learned projection between them, and the teacher's outputs that carry the
teacher's features next to its logits.

`--hint_layers=TEACHER:STUDENT[,...]` names layer pairs; `penultimate` on
either side (or alone, for `penultimate:penultimate`) is the layer that
feeds the model's logits layer. `plan` checks the names and shapes before
any training and picks each pair's projection: none for equal shapes, a
dense layer for flat features, a 1x1 convolution for feature maps of the
same height and width; anything else is refused.

The teacher's outputs travel as rows `[batch, width]` (`OutputLayout`):
its logits, then each hint's features flattened; the same rows are cached
(`kd_tf.logits_cache`) or computed online (`TeacherRows`), and the
`Distiller` splits them.

Usage:

```python
pairs = plan([("penultimate", "penultimate")], teacher_model, student, "saved_models/teacher/1")
rows = TeacherRows(adapter, teacher_model, pairs)         # images -> [batch, rows.width]
terms = hint_terms(pairs, weight=1.0)                      # for the Distiller
```
"""

import math
from typing import NamedTuple

import keras
from keras import ops

from kd_tf.distillation_losses import Hint
from kd_tf.errors import ConfigError

PENULTIMATE = "penultimate"


class HintPair(NamedTuple):
    """One checked hint: the layers' names and their features' shapes (without the batch)."""

    teacher_layer: str
    student_layer: str
    teacher_shape: tuple
    student_shape: tuple


class OutputLayout:
    """Rows of the teacher's outputs: `num_classes` logits, then each
    feature of `feature_shapes` flattened.

    Usage:

    ```python
    layout = OutputLayout(10, [(256,)])
    rows = layout.join(logits, [features])       # [batch, 266]
    logits, (features,) = layout.split(rows)
    ```
    """

    def __init__(self, num_classes, feature_shapes=()):
        self.num_classes = int(num_classes)
        self.feature_shapes = [tuple(shape) for shape in feature_shapes]
        self.width = self.num_classes + sum(math.prod(s) for s in self.feature_shapes)

    def join(self, logits, features):
        if not self.feature_shapes:
            return logits
        batch = ops.shape(logits)[0]
        flat = [ops.reshape(ops.cast(f, "float32"), (batch, -1)) for f in features]
        return ops.concatenate([logits, *flat], axis=-1)

    def split(self, rows):
        """`(logits, [features])` of `rows`."""
        if not self.feature_shapes:
            return rows, []
        features, start = [], self.num_classes
        for shape in self.feature_shapes:
            size = math.prod(shape)
            features.append(ops.reshape(rows[:, start : start + size], (-1, *shape)))
            start += size
        return rows[:, : self.num_classes], features


def penultimate_layer(model):
    """The name of the layer whose output feeds `model`'s logits layer, or
    None (a subclassed model, or logits computed from the input itself)."""
    outputs = getattr(model, "outputs", None)
    if not outputs:
        return None
    by_output = {id(output): layer for layer in model.layers if (output := _output(layer)) is not None}
    logits_layer = by_output.get(id(outputs[0]))
    if logits_layer is None:
        return None
    feeding = by_output.get(id(logits_layer.input))
    if feeding is None or isinstance(feeding, keras.layers.InputLayer):
        return None
    return feeding.name


def _output(layer):
    """The layer's symbolic output, None for a layer called more than once."""
    try:
        return layer.output
    except (AttributeError, ValueError):
        return None


def _layer_shape(model, name, side, where):
    """The feature shape of `model`'s layer `name` (`side`, "teacher" or
    "student"; `where` names the model in errors)."""
    if name == PENULTIMATE:
        name = penultimate_layer(model)
        if name is None:
            raise ConfigError(
                ("hint_layers",),
                f"{{0}}: the {side} {where} has no layer feeding its logits layer: "
                "name its layers in {0} instead of penultimate",
            )
    names = [layer.name for layer in model.layers]
    if name not in names:
        raise ConfigError(
            ("hint_layers",),
            f"{{0}}: the {side} {where} has no layer {name!r}; its layers: {', '.join(names)}",
        )
    shape = tuple(model.get_layer(name).output.shape[1:])
    if None in shape:
        raise ConfigError(
            ("hint_layers",),
            f"{{0}}: the {side} layer {name!r} has features of unknown shape {shape}: "
            "pick a layer of fixed shape",
        )
    return name, shape


def plan(pairs, teacher_model, student, teacher_path):
    """Checks `--hint_layers` against both models, before any training.

    Args:
        pairs: `(teacher layer, student layer)` names (or `PENULTIMATE`).
        teacher_model: the teacher's Keras model (`export.keras_model_of`),
            or None when its layers cannot be read.
        student: the student `keras.Model`.
        teacher_path: the teacher's path, for the errors.

    Returns:
        A list of `HintPair`.

    Raises:
        ConfigError: the teacher's layers cannot be read, a name is unknown,
            or a pair's shapes cannot be projected.
    """
    if pairs and teacher_model is None:
        raise ConfigError(
            ("hint_layers", "teacher_dir"),
            f"{{0}} needs the teacher's layers, and {teacher_path} exposes its logits only "
            "(a SavedModel without assets.extra/architecture.json, which kd_tf writes into "
            "its exports): pass a kd_tf export or a .keras file as {1}, or drop {0}",
        )
    checked = []
    for teacher_layer, student_layer in pairs:
        teacher_layer, teacher_shape = _layer_shape(teacher_model, teacher_layer, "teacher", teacher_path)
        student_layer, student_shape = _layer_shape(student, student_layer, "student", student.name)
        pair = HintPair(teacher_layer, student_layer, teacher_shape, student_shape)
        projection_for(pair)
        checked.append(pair)
    return checked


def projection_for(pair):
    """The layer projecting the student's features onto the teacher's
    (float32, built), or None for equal shapes.

    Raises:
        ConfigError: no dense layer or 1x1 convolution maps one onto the other.
    """
    student, teacher = pair.student_shape, pair.teacher_shape
    if student == teacher:
        return None
    name = f"hint_{pair.student_layer}_to_{pair.teacher_layer}"
    if len(student) == len(teacher) == 1:
        projection = keras.layers.Dense(teacher[0], dtype="float32", name=name)
    elif len(student) == len(teacher) == 3 and student[:2] == teacher[:2]:
        projection = keras.layers.Conv2D(teacher[2], 1, dtype="float32", name=name)
    else:
        raise ConfigError(
            ("hint_layers",),
            f"{{0}}: the student layer {pair.student_layer!r} {student} cannot be projected "
            f"onto the teacher layer {pair.teacher_layer!r} {teacher}: pair flat features "
            "(dense) or feature maps of the same height and width (1x1 convolution)",
        )
    projection.build((None, *student))
    return projection


def hint_terms(pairs, weight):
    """The `(name, Hint, weight)` terms of checked `pairs` (`plan`), each
    with a fresh projection: `hint`, or `hint_1`, `hint_2`, ... for several."""
    names = ["hint"] if len(pairs) == 1 else [f"hint_{i + 1}" for i in range(len(pairs))]
    return [
        (name, Hint(p.teacher_layer, p.student_layer, projection_for(p), p.teacher_shape), weight)
        for name, p in zip(names, pairs)
    ]


def student_extractor(student, hints):
    """`images, training -> [logits, features of each hint]`: the student
    itself without hints, else a model sharing its layers."""
    if not hints:
        return lambda images, training: [student(images, training=training)]
    return keras.Model(
        student.inputs,
        [student.outputs[0], *[student.get_layer(h.student_layer).output for h in hints]],
        name=f"{student.name}_with_hints",
    )


class TeacherRows:
    """The teacher's outputs as `OutputLayout` rows: `images -> [batch,
    width]` float32, through its `teacher_adapter.TeacherAdapter` (the
    logits alone without `pairs`, else from its Keras `model` in one pass).

    Attributes:
        layout: the `OutputLayout`.
        width: its width.
    """

    def __init__(self, adapter, model=None, pairs=()):
        self.adapter = adapter
        self.layout = OutputLayout(adapter.model.num_classes, [p.teacher_shape for p in pairs])
        self.width = self.layout.width
        self._extractor = None
        if pairs:
            self._extractor = keras.Model(
                model.inputs,
                [model.outputs[0], *[model.get_layer(p.teacher_layer).output for p in pairs]],
            )

    def __call__(self, images):
        if self._extractor is None:
            return self.adapter.logits(images)
        outputs = self._extractor(self.adapter.images(images), training=False)
        return self.layout.join(self.adapter.as_logits(outputs[0]), outputs[1:])
