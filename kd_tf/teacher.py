"""The teacher of a distillation run and its logits, one object that owns them.

`Teacher.load` loads a model that follows the serving contract (see
`kd_tf.export`) under the run's strategy, and, for hints, the Keras model
whose layers they read; `check_fits` refuses one that does not take the data
set's images or classes; `check` measures it on the data (see
`kd_tf.teacher_check`), picks its pixel range and refuses one that cannot
teach; `datasets` decides how its outputs (its logits, and the features of
the hints: `hints.TeacherRows`) reach the `Distiller` (computed once for
every view and cached in memory or in a file on disk, or run online every
step) and builds the training and validation datasets. The file belongs to
the `Teacher`: leaving its `with` block (or `close()`) removes it, whether
the run ended well or not.

Usage:

```python
with teacher.Teacher.load("saved_models/teacher/1", strategy, stage="student") as t:
    t.check_fits(splits)
    t.check(splits, batch_size=1024)
    logits = t.datasets(splits.train, splits.validation, views=4, random_augment=False,
                        distillation=config.distillation, batch_size=128,
                        eval_batch_size=1024, seed=0)
    distiller.fit(logits.train, validation_data=logits.validation, ...)
```
"""

import dataclasses
import os
import time

import tensorflow as tf

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
    """How the teacher's logits reach the `Distiller`, and the datasets carrying them.

    Attributes:
        mode: "cached" or "online".
        cache: "memory" or "disk" when cached, else None.
        train: endless training `tf.data.Dataset`.
        validation: finite validation `tf.data.Dataset` (its logits are
            always cached: the validation split is never distorted).
        seconds: time spent computing the cached logits.
        megabytes: size of the cached training logits (and hint features).
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
    """A loaded teacher, and the on-disk logit shards it made (see module doc).

    Attributes:
        model: the `export.ServingModel`.
        adapter: once `check_fits` has seen the data, the
            `teacher_adapter.TeacherAdapter` through which its logits are read.
        checked: once `check` has measured it, its `teacher_check.TeacherCheck`.
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
        self._shards = None
        self._cache_dir = None

    @classmethod
    def load(cls, teacher_dir, strategy, stage, *, pixel_range="auto", output="auto",
             class_order=None, min_accuracy=None, layers=False):
        """Loads the teacher at `teacher_dir` under `strategy`'s scope, so that
        its variables are mirrored onto every replica's device and the online
        mode reads them locally; `stage` names the run in the error. A teacher
        may take float images in `pixel_range`, return probabilities
        (`output`), predict the classes in another order (`class_order`, see
        `kd_tf.teacher_adapter`); `min_accuracy` is the check's floor (see
        `kd_tf.teacher_check`). `layers` also loads its Keras model
        (`keras_model`), for hints."""
        if not teacher_dir:
            raise ConfigError(
                ("stage", "teacher_dir"),
                f"{{0}}={stage} needs a teacher: pass {{1}}=DIR (an export of "
                "the teacher stage, e.g. saved_models/teacher/1, or a .keras file)",
            )
        with strategy.scope():
            model = export.load_serving_model(teacher_dir, float_input=True)
            keras_model = export.keras_model_of(model) if layers else None
            return cls(model, pixel_range, output, class_order, min_accuracy, keras_model)

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

    def datasets(
        self, train, validation, *, views, random_augment, distillation, batch_size,
        eval_batch_size, seed, hint_pairs=(),
    ):
        """The training and validation datasets with the teacher's outputs.

        Args:
            train, validation: the training and validation splits.
            views: K > 0 trains on K fixed views of each training example
                (see `pipelines.training_dataset`).
            random_augment: whether the pipeline draws distortions afresh.
            distillation: a `config.DistillationConfig` (`teacher_logits`,
                `logits_cache`, `logits_memory_mb`, `logits_cache_dir`,
                `mixup_alpha`).
            batch_size: global training batch.
            eval_batch_size: batch of the teacher's passes and of validation.
            seed: the training stream's seed.
            hint_pairs: the checked `hints.HintPair`s whose teacher features
                travel with the logits.

        Returns:
            A `TeacherLogits`.
        """
        self.adapter.resolve_output(validation.head(teacher_adapter.PROBE_EXAMPLES))
        self._cache_dir = distillation.logits_cache_dir
        mixup = distillation.mixup_alpha
        mode = _logits_mode(distillation.teacher_logits, random_augment or mixup > 0)
        outputs = hints.TeacherRows(self.adapter, self.keras_model, hint_pairs)
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
                augment=random_augment, mixup_alpha=mixup, num_classes=self.model.num_classes,
            ),
            pipelines.evaluation_dataset(validation, eval_batch_size, logits=validation_logits),
            time.perf_counter() - started,
            train_logits.megabytes if train_logits else 0.0,
            outputs,
        )

    def _table(self, outputs, split, views, seed, batch_size, cache, name):
        """The `LogitsTable` of `outputs` (`hints.TeacherRows`) on `split`'s
        views, in a file of this teacher's `ShardDirectory` when `cache` is
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

    def report_fields(self, logits):
        """The report fields of the teacher, its check and its `TeacherLogits`."""
        return {
            "teacher_dir": self.model.path,
            "teacher_output": self.adapter.output,
            **self.checked.report_fields(),
            "teacher_logits": logits.mode,
            "teacher_logits_seconds": round(logits.seconds, 2),
            "logits_cache": logits.cache,
            "logits_cache_megabytes": round(logits.megabytes, 3),
        }


def _logits_mode(requested, random_augment):
    if requested == "cached" and random_augment:
        raise ConfigError(
            ("teacher_logits", "augment_views", "teacher_logits"),
            "{0}=cached cannot follow distortions drawn afresh every step: "
            "pass {1}=K to cache logits of K fixed views, or {2}=online",
        )
    return distillation.resolve_teacher_logits_mode(requested, random_augment)
