"""The teachers of a distillation run and their logits, one object that owns them.

`--teacher_dir` names one teacher or several, an ensemble. `Teachers.load`
loads each (a `Teacher`: a model that follows the serving contract, see
`kd_tf.export`, and for hints the Keras model whose layers they read) and
refuses teachers that disagree on their classes; `check_fits` refuses one
that does not take the data set's images or classes; `check` measures each
on the data (see `kd_tf.teacher_check`), picks its pixel range and refuses
one that cannot teach; `datasets` decides how their outputs (their logits
side by side, and the features of the hints: `hints.TeacherRows`) reach the
`Distiller` (computed once for every view and cached in memory or in a file
on disk, or run online every step) and builds the training and validation
datasets; `measure_test` measures each teacher, and the ensemble, on the
test split for the report. The file belongs to the `Teachers`: leaving its
`with` block (or `close()`) removes it, whether the run ended well or not.

An ensemble's target is the mean of its teachers' softened probabilities
(`distillation_losses.teacher_distribution`); its accuracy is that of the
mean of their probabilities (temperature 1).

Usage:

```python
dirs = ("saved_models/teacher/1", "saved_models/teacher/2")
with teacher.Teachers.load(dirs, strategy, stage="student") as teachers:
    teachers.check_fits(splits)
    teachers.check(splits, batch_size=1024)
    logits = teachers.datasets(splits.train, splits.validation, views=4,
                               random_augment=False, distillation=config.distillation,
                               batch_size=128, eval_batch_size=1024, seed=0)
    teachers.measure_test(splits.test, batch_size=1024)
    distiller.fit(logits.train, validation_data=logits.validation, ...)
```
"""

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from kd_tf import (
    distillation,
    export,
    hints,
    logits_cache,
    pipelines,
    teacher_adapter,
    teacher_check,
)
from kd_tf.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TeacherLogits:
    """How the teachers' logits reach the `Distiller`, and the datasets carrying them.

    Attributes:
        mode: "cached" or "online".
        cache: "memory" or "disk" when cached, else None.
        train: endless training `tf.data.Dataset`.
        validation: finite validation `tf.data.Dataset` (its logits are
            always cached: the validation split is never distorted).
        seconds: time spent computing the cached logits.
        megabytes: size of the cached training logits (of every teacher,
            and hint features).
        outputs: the `hints.TeacherRows` the online mode calls.
    """

    mode: str
    cache: str | None
    train: tf.data.Dataset
    validation: tf.data.Dataset
    seconds: float
    megabytes: float
    outputs: hints.TeacherRows


class Teacher:
    """One loaded teacher (see the module doc).

    Attributes:
        model: the `export.ServingModel`.
        adapter: once `check_fits` has seen the data, the
            `teacher_adapter.TeacherAdapter` through which its logits are read.
        checked: once `check` has measured it, its `teacher_check.TeacherCheck`.
        test_accuracy: once `Teachers.measure_test` has measured it, its
            accuracy on the test split (None for an empty one).
        keras_model: its Keras model, whose layers hints read
            (`export.keras_model_of`; None unless loaded with `layers=True`, or
            for a SavedModel that exposes its logits only).
    """

    def __init__(self, model, pixel_range="auto", output="auto", class_order=None,
                 min_accuracy=None, keras_model=None):
        self.model = model
        self.keras_model = keras_model
        self.pixel_range = pixel_range
        self.output = output
        self.class_order = class_order
        self.min_accuracy = min_accuracy
        self.adapter = None
        self.checked = None
        self.test_accuracy = None

    @classmethod
    def load(cls, path, *, layers=False, **settings):
        """Loads the teacher at `path` (in the caller's strategy scope).
        `settings` are `Teacher`'s: a teacher may take float images in
        `pixel_range`, return probabilities (`output`), predict the classes
        in another order (`class_order`, see `kd_tf.teacher_adapter`);
        `min_accuracy` is the check's floor (see `kd_tf.teacher_check`).
        `layers` also loads its Keras model (`keras_model`), for hints."""
        model = export.load_serving_model(path, float_input=True)
        keras_model = export.keras_model_of(model) if layers else None
        return cls(model, keras_model=keras_model, **settings)

    def check_fits(self, splits):
        """Checks that the teacher predicts the data set's classes, named as
        the data names them, and takes images its images can be converted
        to; sets `adapter`."""
        export.check_classes(self.model, "teacher", splits)
        teacher_adapter.check_input(self.model, splits.image_shape)
        if self.class_order is not None and len(self.class_order) != splits.num_classes:
            raise ConfigError(
                ("teacher_class_order",),
                f"{{0}} lists {len(self.class_order)} classes but {splits.dataset} has "
                f"{splits.num_classes}: list the teacher's output for each class",
            )
        export.check_class_names(self.model, "teacher", splits, self.class_order)
        self.adapter = teacher_adapter.TeacherAdapter(
            self.model, splits.image_shape, self.pixel_range, self.output, self.class_order
        )

    def check(self, splits, batch_size):
        """Measures the teacher on `splits` (`teacher_check.check_teacher`,
        in batches of `batch_size`) and sets its pixel range; raises
        `ConfigError` for a teacher that cannot teach."""
        split, name = teacher_check.check_split(splits)
        self.checked = teacher_check.check_teacher(
            self.adapter, split, name, pixel_range=self.pixel_range,
            min_accuracy=self.min_accuracy, batch_size=batch_size,
        )
        if self.checked.pixel_range is not None:
            self.adapter.pixel_range = self.checked.pixel_range

    def report_fields(self):
        """The report fields of this teacher: its path, output, check and
        test accuracy."""
        return {
            "teacher_dir": self.model.path,
            "teacher_output": self.adapter.output,
            **self.checked.report_fields(),
            "teacher_test_accuracy": self.test_accuracy,
        }


def check_agreement(members):
    """Refuses the teachers of an ensemble that disagree on their number of
    classes, or on their names where they record them (in one line, naming
    two of them and the first difference)."""
    first = members[0].model
    for other in (member.model for member in members[1:]):
        if other.num_classes != first.num_classes:
            raise ConfigError(
                ("teacher_dir",),
                f"the teachers in {{0}} disagree: {first.path} predicts {first.num_classes} "
                f"classes, {other.path} {other.num_classes}: an ensemble's teachers must "
                "predict the same classes",
            )
    named = [member.model for member in members if member.model.class_names is not None]
    for other in named[1:]:
        if other.class_names != named[0].class_names:
            index = next(
                i for i, (a, b) in enumerate(zip(named[0].class_names, other.class_names)) if a != b
            )
            raise ConfigError(
                ("teacher_dir",),
                f"the teachers in {{0}} name their classes differently: class {index} is "
                f"{named[0].class_names[index]!r} in {named[0].path}, "
                f"{other.class_names[index]!r} in {other.path}: an ensemble's teachers must "
                "predict the same classes in the same order",
            )


def accuracies(logits, labels):
    """`(each teacher's accuracy, the ensemble's)` of the teachers' `logits`
    `[N, teachers, classes]` on `labels` `[N]`; the ensemble predicts the
    most likely class of the mean of the teachers' probabilities."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).reshape(-1, 1)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    mean = (shifted / shifted.sum(axis=-1, keepdims=True)).mean(axis=1)
    each = (logits.argmax(axis=-1) == labels).mean(axis=0)
    return [float(value) for value in each], float((mean.argmax(axis=-1) == labels[:, 0]).mean())


class Teachers:
    """The loaded teachers of a run, one or several, and the on-disk logit
    shards made of them (see the module doc).

    Attributes:
        members: the `Teacher`s, in `--teacher_dir`'s order (the order of
            their logits in the rows, and of the report's `teachers`).
        ensemble_test_accuracy: once `measure_test` has run, the accuracy of
            the mean of the teachers' probabilities on the test split.
    """

    def __init__(self, members):
        self.members = list(members)
        self.ensemble_test_accuracy = None
        self._shards = None
        self._cache_dir = None

    @classmethod
    def load(cls, teacher_dirs, strategy, stage, *, layers=False, **settings):
        """Loads the teachers at `teacher_dirs` under `strategy`'s scope, so
        that their variables are mirrored onto every replica's device and the
        online mode reads them locally; `stage` names the run in the error.
        `layers` and `settings` are `Teacher.load`'s, for each teacher.

        Raises:
            ConfigError: no teacher is given, or the teachers disagree on
                their classes (`check_agreement`).
        """
        if not teacher_dirs:
            raise ConfigError(
                ("stage", "teacher_dir"),
                f"{{0}}={stage} needs a teacher: pass {{1}}=DIR (an export of "
                "the teacher stage, e.g. saved_models/teacher/1, or a .keras file; "
                "a comma-separated list for an ensemble)",
            )
        with strategy.scope():
            members = [Teacher.load(path, layers=layers, **settings) for path in teacher_dirs]
        check_agreement(members)
        return cls(members)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Removes the on-disk logits, if any."""
        if self._shards is not None:
            self._shards.close()
            self._shards = None

    def check_fits(self, splits):
        """`Teacher.check_fits` of each teacher."""
        for member in self.members:
            member.check_fits(splits)

    def check(self, splits, batch_size):
        """`Teacher.check` of each teacher: each is measured, and may be
        refused, on its own."""
        for member in self.members:
            member.check(splits, batch_size)

    def datasets(
        self, train, validation, *, views, random_augment, distillation, batch_size,
        eval_batch_size, seed, hint_pairs=(),
    ):
        """The training and validation datasets with the teachers' outputs.

        Args:
            train, validation: the training and validation splits.
            views: K > 0 trains on K fixed views of each training example
                (see `pipelines.training_dataset`).
            random_augment: whether the pipeline draws distortions afresh.
            distillation: a `config.DistillationConfig` (`teacher_logits`,
                `logits_cache`, `logits_memory_mb`, `logits_cache_dir`,
                `mixup_alpha`).
            batch_size: global training batch.
            eval_batch_size: batch of the teachers' passes and of validation.
            seed: the training stream's seed.
            hint_pairs: the checked `hints.HintPair`s whose teacher features
                travel with the logits (one teacher only).

        Returns:
            A `TeacherLogits`.
        """
        for member in self.members:
            member.adapter.resolve_output(validation.head(teacher_adapter.PROBE_EXAMPLES))
        self._cache_dir = distillation.logits_cache_dir
        mixup = distillation.mixup_alpha
        mode = _logits_mode(distillation.teacher_logits, random_augment or mixup > 0)
        outputs = hints.TeacherRows(
            [member.adapter for member in self.members], self.members[0].keras_model, hint_pairs
        )
        started = time.perf_counter()
        cache, train_logits, validation_logits = None, None, None
        if mode == "cached":
            cache = logits_cache.resolve_cache(
                distillation.logits_cache, len(train) * max(1, views), outputs.width,
                distillation.logits_memory_mb,
            )
            train_logits = self._table(
                outputs, train, views, seed, eval_batch_size, cache, "train"
            )
        validation_logits = self._table(
            outputs, validation, 0, seed, eval_batch_size, cache, "validation"
        )
        return TeacherLogits(
            mode,
            cache,
            pipelines.training_dataset(
                train, batch_size, seed=seed, views=views, logits=train_logits,
                augment=random_augment, mixup_alpha=mixup,
                num_classes=self.members[0].model.num_classes,
            ),
            pipelines.evaluation_dataset(validation, eval_batch_size, logits=validation_logits),
            time.perf_counter() - started,
            train_logits.megabytes if train_logits else 0.0,
            outputs,
        )

    def _table(self, outputs, split, views, seed, batch_size, cache, name):
        """The `LogitsTable` of `outputs` (`hints.TeacherRows`) on `split`'s
        views, in a file of this run's `ShardDirectory` when `cache` is
        "disk"."""
        path = None
        if cache == "disk":
            if self._shards is None:
                self._shards = logits_cache.ShardDirectory(self._cache_dir)
            path = os.path.join(self._shards.path, f"{name}.npy")
        return logits_cache.LogitsTable.compute(
            outputs, outputs.width, split, num_views=views, seed=seed, batch_size=batch_size,
            path=path,
        )

    def measure_test(self, test, batch_size):
        """Measures each teacher, and the ensemble, on the `test` split (once
        `datasets` has resolved their outputs), for the report; logs them."""
        if not len(test):
            return
        rows = hints.TeacherRows([member.adapter for member in self.members])
        logits = test.map_batches(rows, batch_size, "teachers: measuring the test split")
        each, ensemble = accuracies(
            logits.reshape(len(test), len(self.members), -1), test.labels
        )
        for member, accuracy in zip(self.members, each):
            member.test_accuracy = accuracy
        shown = ", ".join(f"{m.model.path} {100 * a:.2f} %" for m, a in zip(self.members, each))
        if len(self.members) == 1:
            logging.info("teacher test accuracy: %s", shown)
            return
        self.ensemble_test_accuracy = ensemble
        logging.info(
            "teachers' test accuracy: %s; the ensemble (mean probabilities) %.2f %%",
            shown, 100 * ensemble,
        )

    def report_fields(self, logits):
        """The report fields of the teachers, their checks and their
        `TeacherLogits`: `teachers` (each one's fields), and one teacher's
        fields at the top level, or the ensemble's test accuracy."""
        fields = {"teachers": [member.report_fields() for member in self.members]}
        if len(self.members) == 1:
            fields.update(fields["teachers"][0])
        else:
            fields["ensemble_test_accuracy"] = self.ensemble_test_accuracy
        fields.update(
            teacher_logits=logits.mode,
            teacher_logits_seconds=round(logits.seconds, 2),
            logits_cache=logits.cache,
            logits_cache_megabytes=round(logits.megabytes, 3),
        )
        return fields


def _logits_mode(requested, random_augment):
    if requested == "cached" and random_augment:
        raise ConfigError(
            ("teacher_logits", "augment_views", "teacher_logits"),
            "{0}=cached cannot follow distortions drawn afresh every step: "
            "pass {1}=K to cache logits of K fixed views, or {2}=online",
        )
    return distillation.resolve_teacher_logits_mode(requested, random_augment)
