"""The teacher measured on the user's labelled data before anything is distilled from it.

A teacher fed its pixels in the wrong range, predicting its classes in
another order than the data set's, or trained on other data still outputs
confident logits, and a student would learn from them without a word.
`check_teacher` measures one teacher (a `teacher_adapter.TeacherAdapter`) on
the first `CHECK_EXAMPLES` images of a split (`check_split`: the validation
split, the training split's when there is none), one pass per pixel range:

- **pixel range**: a teacher taking float images is measured under each of
  `teacher_adapter.PIXEL_RANGES`; all are logged, and unless a range was
  given, the one with the lowest cross-entropy is taken. Not the most
  accurate: a network without normalisation is nearly positively
  homogeneous (ReLU), so fed 0-255 pixels instead of 0-1 it keeps its
  argmax, and its accuracy, while its logits grow 255 times and a student
  would learn one-hot targets (measured on 2048 MNIST images with an MLP
  trained on 0-1 pixels: 88.3 % under 0-255, 88.4 % under 0-1, but a
  cross-entropy of 33.9 against 0.44); the cross-entropy, what the teacher
  was trained to minimise, tells them apart;
- **class order**: from the confusion matrix, when each class the teacher
  gets wrong goes mostly (`DOMINANT_SHARE`) to one other output and those
  outputs form a permutation, its classes are in another order: one line
  names the order found (to pass as `--teacher_class_order`); the outputs
  are never reordered silently;
- **floor**: a teacher scoring below `default_floor` (or the given minimum)
  is refused in one line that names its accuracy and the likely causes.

Both refusals are `ConfigError`s (exit status 2) raised before any training;
a minimum accuracy of 0 turns them into warnings. It takes one teacher, so a
run with several calls it once per teacher.

Usage:

```python
split, split_name = teacher_check.check_split(splits)
check = teacher_check.check_teacher(
    adapter, split, split_name, pixel_range="auto", min_accuracy=None, batch_size=1024
)
adapter.pixel_range = check.pixel_range
report.update(check.report_fields())
```
"""

import dataclasses

import numpy as np
from absl import logging

from kd_tf import teacher_adapter
from kd_tf.errors import ConfigError

# Images the teacher is measured on: enough to tell 20 % from 10 % by 15
# standard deviations, cheap even for a large teacher (one pass per range).
CHECK_EXAMPLES = 2048
# A class whose images go to one output more than this share of the time
# is "dominated" by that output.
DOMINANT_SHARE = 0.5
# A class with fewer images in the check says nothing about the class order.
MIN_CLASS_EXAMPLES = 8


@dataclasses.dataclass(frozen=True)
class Scores:
    """The teacher's agreement with the labels under one pixel range.

    Attributes:
        accuracy: its accuracy under the class order in use.
        loss: its cross-entropy under the class order it is best read in
            (`found_order` when there is one, else the order in use).
        found_order: another class order under which it agrees better (see
            `found_order`), or None.
        found_accuracy: its accuracy under `found_order`, or None.
    """

    accuracy: float
    loss: float
    found_order: tuple | None
    found_accuracy: float | None

    @property
    def best(self):
        return max(self.accuracy, self.found_accuracy or 0.0)


@dataclasses.dataclass(frozen=True)
class TeacherCheck:
    """What `check_teacher` measured and decided.

    Attributes:
        path: the teacher's path.
        split: the split measured ("validation" or "train").
        examples: the images measured.
        pixel_range: the range used (None for a teacher taking uint8 images).
        range_chosen: whether `pixel_range` was picked from the data.
        scores: `{pixel range: Scores}` (the one key None for a uint8 teacher).
        class_order: the class order in use (None: the teacher's own).
        floor: the lowest accuracy accepted.
    """

    path: str
    split: str
    examples: int
    pixel_range: str | None
    range_chosen: bool
    scores: dict
    class_order: tuple | None
    floor: float

    @property
    def accuracy(self):
        """The accuracy under the pixel range and class order in use."""
        return self.scores[self.pixel_range].accuracy

    @property
    def found(self):
        """The `Scores` under the range in use."""
        return self.scores[self.pixel_range]

    def describe(self):
        """The check's log line."""
        line = (
            f"teacher {self.path}: {_percent(self.accuracy)} accuracy on {self.examples} "
            f"{self.split} images"
        )
        if self.pixel_range is not None:
            how = "picked from the data" if self.range_chosen else "as given"
            line += f", pixel range {self.pixel_range} ({how}; measured: {_by_range(self.scores)})"
        if self.class_order is not None:
            line += f", class order {_order_text(self.class_order)}"
        return line

    def _by_range(self, value):
        return {
            name: round(value(score), 4) for name, score in self.scores.items() if name is not None
        }

    def report_fields(self):
        """The check's fields of the run report."""
        return {
            "teacher_validation_accuracy": round(self.accuracy, 4),
            "teacher_check_split": self.split,
            "teacher_check_examples": self.examples,
            "teacher_pixel_range": self.pixel_range,
            "teacher_pixel_range_chosen": self.range_chosen,
            "teacher_pixel_range_accuracies": self._by_range(lambda score: score.accuracy),
            "teacher_pixel_range_losses": self._by_range(lambda score: score.loss),
            "teacher_class_order": None if self.class_order is None else list(self.class_order),
            "teacher_accuracy_floor": round(self.floor, 4),
        }


def check_split(splits):
    """`(split, name)`: the split a teacher is checked on, the validation
    split or, when it is empty, the training split."""
    if len(splits.validation):
        return splits.validation, "validation"
    return splits.train, "train"


def default_floor(num_classes, best):
    """The lowest accuracy a teacher of `num_classes` is accepted with when
    the best accuracy any pixel range or class order gave it is `best`.

    Twice chance (a random teacher on `CHECK_EXAMPLES` images of 10 classes
    scores 10 % +- 0.7 %), but at most a third of the way from chance to
    every image right (twice chance is out of reach with 2 classes); and at
    least half of `best`, so that a pixel range or class order that makes the
    teacher twice as accurate is not passed over.
    """
    chance = 1.0 / num_classes
    return max(min(2 * chance, chance + (1 - chance) / 3), 0.5 * best)


def confusion_matrix(labels, predictions, num_classes):
    """`[label, prediction]` counts, int64 `[num_classes, num_classes]`."""
    flat = np.asarray(labels, np.int64) * num_classes + np.asarray(predictions, np.int64)
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def found_order(confusion, order):
    """A class order under which the teacher agrees better with the labels,
    or None.

    Args:
        confusion: `confusion_matrix` of the labels and the teacher's raw
            output indices.
        order: the class order in use: `order[c]` is the output read as class c.

    Returns:
        `order` with every class c that is dominated (`DOMINANT_SHARE`, at
        least `MIN_CLASS_EXAMPLES` images) by an output other than
        `order[c]` reading that output instead, when there is such a class and
        the result is a permutation; else None.
    """
    counts = confusion.sum(axis=1)
    dominant = confusion.argmax(axis=1)
    share = confusion[np.arange(len(order)), dominant] / np.maximum(counts, 1)
    moved = (
        (counts >= MIN_CLASS_EXAMPLES) & (share > DOMINANT_SHARE) & (dominant != np.asarray(order))
    )
    if not moved.any():
        return None
    new_order = np.where(moved, dominant, order)
    if len(set(new_order.tolist())) != len(order):
        return None
    return tuple(int(output) for output in new_order)


def scores(labels, log_probabilities, order):
    """The `Scores` of the teacher's `log_probabilities` (`[N, outputs]`) of
    the images of `labels` under the class order `order`."""
    num_classes = log_probabilities.shape[-1]
    predictions = np.argmax(log_probabilities, axis=-1)
    confusion = confusion_matrix(labels, predictions, num_classes)
    total = max(len(labels), 1)

    def accuracy(classes):
        return float(confusion[np.arange(num_classes), classes].sum()) / total

    found = found_order(confusion, order)
    read_in = np.asarray(found or order)
    loss = -float(np.mean(log_probabilities[np.arange(len(labels)), read_in[labels]]))
    return Scores(accuracy(order), loss, found, None if found is None else accuracy(found))


def log_probabilities(outputs, output):
    """The log-probabilities of the teacher's raw `outputs` (`[N, outputs]`),
    read as `output` says ("auto": probabilities when they look like them)."""
    outputs = np.asarray(outputs, np.float64)
    if output == "probabilities" or (
        output == "auto" and teacher_adapter.looks_like_probabilities(outputs)
    ):
        return np.log(np.maximum(outputs, np.finfo(np.float32).tiny))
    shifted = outputs - outputs.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def check_teacher(adapter, split, split_name, *, pixel_range, min_accuracy, batch_size):
    """Measures the teacher of `adapter` on `split` (see the module doc).

    Args:
        adapter: the teacher's `TeacherAdapter`; its `class_order` is the
            order in use.
        split: the split to measure it on (`check_split`), of which the first
            `CHECK_EXAMPLES` images are used.
        split_name: its name in messages and the report.
        pixel_range: a key of `PIXEL_RANGES`, or "auto" to pick the best.
        min_accuracy: the lowest accuracy accepted; None: `default_floor`;
            0: never refuse (the findings are logged as warnings).
        batch_size: the batch of the teacher's passes.

    Returns:
        A `TeacherCheck` (logged).

    Raises:
        ConfigError: the teacher predicts its classes in another order, or
            scores below the floor (exit status 2, one line).
    """
    num_classes = adapter.model.num_classes
    order = adapter.class_order or tuple(range(num_classes))
    ranges = tuple(teacher_adapter.PIXEL_RANGES) if adapter.takes_float else (None,)
    labels, outputs = _outputs(adapter, split, ranges, batch_size)
    by_range = {
        name: scores(labels, log_probabilities(raw, adapter.output), order)
        for name, raw in outputs.items()
    }
    best = max(score.best for score in by_range.values())
    check = TeacherCheck(
        path=adapter.model.path,
        split=split_name,
        examples=len(labels),
        pixel_range=_pixel_range(adapter, pixel_range, by_range),
        range_chosen=adapter.takes_float and pixel_range == "auto",
        scores=by_range,
        class_order=adapter.class_order,
        floor=default_floor(num_classes, best) if min_accuracy is None else min_accuracy,
    )
    logging.info("%s", check.describe())
    _judge(check, refuse=min_accuracy != 0)
    _warn_of_a_better_range(check)
    return check


def _outputs(adapter, split, ranges, batch_size):
    """`(labels, {pixel range: the teacher's raw outputs})` of the first
    `CHECK_EXAMPLES` images of `split`, one pass per range."""
    dataset = split.batches(batch_size).unbatch().take(CHECK_EXAMPLES).batch(batch_size)
    labels, outputs = None, {}
    for name in ranges:
        probe = teacher_adapter.TeacherAdapter(
            adapter.model, adapter.data_shape, name or "auto", output="logits"
        )
        passed = [(probe.logits(images).numpy(), batch) for images, batch in dataset]
        outputs[name] = np.concatenate([raw for raw, _ in passed])
        labels = np.concatenate([batch.numpy() for _, batch in passed])
    return labels, outputs


def _pixel_range(adapter, pixel_range, by_range):
    """The range used: None for a uint8 teacher, else the given one, or with
    "auto" the one with the lowest loss."""
    if not adapter.takes_float:
        return None
    if pixel_range != "auto":
        return pixel_range
    return min(by_range, key=lambda name: by_range[name].loss)


def _judge(check, refuse):
    """Raises (or, when not `refuse`, logs) a class order found or an
    accuracy below the floor."""
    problem = None
    if check.found.found_order is not None:
        problem = _class_order_problem(check)
    elif check.accuracy < check.floor:
        problem = _floor_problem(check)
    if problem is None:
        return
    fields, message = problem
    if refuse:
        raise ConfigError(fields, message)
    logging.warning("%s", ConfigError(fields, message))


def _warn_of_a_better_range(check):
    """Warns when the given pixel range is not the one with the lowest loss."""
    if check.pixel_range is None or check.range_chosen:
        return
    best = min(check.scores, key=lambda name: check.scores[name].loss)
    if best != check.pixel_range:
        logging.warning(
            "teacher %s: its cross-entropy is lower under pixel range %s than under the %s "
            "given (measured: %s): is --teacher_pixel_range right?",
            check.path, best, check.pixel_range, _by_range(check.scores),
        )


def _class_order_problem(check):
    found = check.found
    text = _order_text(found.found_order)
    return (
        ("teacher_class_order", "min_teacher_accuracy"),
        f"teacher {check.path} predicts the classes in another order than the data set: "
        f"{_percent(check.accuracy)} accuracy on {check.examples} {check.split} images, "
        f"{_percent(found.found_accuracy)} with its outputs read in the order {text}: pass "
        f"{{0}}={text} to read them so (or {{1}}=0 to keep them as they are)",
    )


def _floor_problem(check):
    """Names the accuracy, the floor and what may cause it."""
    causes = []
    if check.pixel_range is not None:
        causes.append(f"its pixel range, {{2}} (measured: {_by_range(check.scores)})")
    causes.append("its class order, {1}")
    causes.append("a teacher trained on other data")
    return (
        ("min_teacher_accuracy", "teacher_class_order", "teacher_pixel_range"),
        f"teacher {check.path} scores {_percent(check.accuracy)} on {check.examples} "
        f"{check.split} images, below the {_percent(check.floor)} it needs to teach ({{0}}); "
        f"likely causes: {'; '.join(causes)}: fix them, or pass {{0}}=0 to use it anyway",
    )


def _percent(value):
    return f"{100 * value:.1f} %"


def _by_range(by_range):
    return ", ".join(
        f"{name} {_percent(score.accuracy)} (loss {score.loss:.3g})"
        for name, score in by_range.items()
    )


def _order_text(order):
    return ",".join(str(output) for output in order)
