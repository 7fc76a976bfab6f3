"""The report of a training stage, a typed record built in one place.

`RunReport` holds what every training stage reports; `as_json` gives the
`report.json` written into the export (and returned by the stage, with
`export_dir`).

Usage:

```python
report = RunReport(stage="teacher", flags=config.fields(cfg), ...)
report.test_accuracy, report.test_loss = 0.99, 0.03
reporting.write_json(report.as_json(), "report.json")
```
"""

import dataclasses



def data_summary(splits, data_config):
    """The data set's description in a report: its splits, the training
    images' background (`"dark"` or `"light"`, see `images.background`; what
    `predict` matches image files to), whether the training split was read
    from its files while training (`streamed`) and augmentation."""
    return {
        **splits.summary(),
        "background": splits.train.background,
        "streamed": not splits.train.in_memory,
        "augment": data_config.augment,
        "augment_views": data_config.augment_views,
    }


@dataclasses.dataclass
class RunReport:
    """What a training stage reports.

    Attributes:
        stage: "teacher", "student" or "scratch".
        flags: every setting of the run (`config.fields`).
        data: `data_summary` of its data (with its `class_names`).
        preprocessing: what the export does to an image file
            (`preprocessing.Preprocessing.as_json`), which `predict` applies.
        model: the architecture's name.
        params: the model's parameter count.
        epochs: `training.EpochRecorder`'s records.
        best_epoch: the restored epoch, from 1.
        strategy, replicas, workers: where it trained.
        stage_seconds: wall time up to the export.
        resumed_from_epoch: the backed-up epoch it resumed after (0: none).
        precision: the dtype policy it trained in (see `kd_tf.precision`).
        cpu: the CPU and the threads and precision chosen for it
            (`kd_tf.cpu.as_json`).
        distillation: the student's teacher and loss fields, the teacher
            check's among them (`teacher_check.TeacherCheck.report_fields`:
            `teacher_validation_accuracy`, the pixel range, class order);
            empty otherwise.
        test_accuracy, test_loss: measured through the reloaded export.
        confusion: its test confusion matrix (`reporting.confusion_matrix`,
            rows the true classes, in `data.class_names` order), as lists.
        per_class: `reporting.per_class_rows` of it: each class's name,
            test examples and `accuracy`.
    """

    stage: str
    flags: dict
    data: dict
    preprocessing: dict
    model: str
    params: int
    epochs: list
    best_epoch: int
    strategy: str
    replicas: int
    workers: int
    stage_seconds: float
    resumed_from_epoch: int
    precision: str
    cpu: dict
    distillation: dict = dataclasses.field(default_factory=dict)
    test_accuracy: float | None = None
    test_loss: float | None = None
    confusion: list | None = None
    per_class: list | None = None

    def as_json(self):
        """The report as `report.json` holds it (distillation fields at the top level)."""
        fields = dataclasses.asdict(self)
        fields.update(fields.pop("distillation"))
        for key in ("test_accuracy", "test_loss", "confusion", "per_class"):
            if fields[key] is None:
                del fields[key]
        return fields
