"""What defines a training run, so that a backup resumes only the run that made it.

A backup records the run's fields (`run_fields`): the config fields that
change what a training stage computes (`RUN_FIELDS`, and the student's
`STUDENT_RUN_FIELDS`), its stage and model, and the identities of what it
read (`IDENTITIES`: the data, `DataSplits.fingerprint`, and the student's
teacher, `export.fingerprint`). `NOT_RUN_FIELDS` change only how or where a
stage computes, or what else it writes, and the groups of `NOT_RUN_GROUPS`
are read by other stages only: a backup resumes with other values of those.
Every config field is in one of these (tests/test_backup.py checks it, so a
field added later must be classified). `check` refuses a backup of another
run, naming what changed.

Usage:

```python
fields = run_identity.run_fields(config_lib.fields(config), "student", "seed_mlp",
                                 teacher=export.fingerprint(teacher_dir))
run_identity.check(backup_dir, record["run"], fields)  # ConfigError if another run's
```
"""

from kd_tf.errors import ConfigError

# Config fields that define a training run; a backup resumes only a run with
# the same values (and the same stage and model).
RUN_FIELDS = (
    "dataset",
    "data_source",
    "tfds_data_dir",
    "idx_dir",
    "data_dir",
    "image_size",
    "test_fraction",
    # A TFRecord or TFDS split streamed past the budget is read in another
    # order than the same split in memory.
    "data_memory_mb",
    "train_examples",
    "validation_examples",
    "augment",
    "augment_views",
    "epochs",
    "batch_size",
    "optimizer",
    "learning_rate",
    "lr_schedule",
    "warmup_epochs",
    "weight_decay",
    "seed",
    "precision",
)
STUDENT_RUN_FIELDS = (
    "teacher_dir",
    "teacher_pixel_range",
    "teacher_class_order",
    "teacher_output",
    "teacher_logits",
    "temperature",
    "alpha",
    "distillation_loss",
    "dkd_alpha",
    "dkd_beta",
    "dkd_warmup_epochs",
    "dist_beta",
    "dist_gamma",
    "hint_layers",
    "hint_weight",
    "mixup_alpha",
)
# Config fields that change how or where a training stage computes, or what
# else it writes, but not what it computes: a backup resumes with other values.
NOT_RUN_FIELDS = (
    # The batches of evaluation and of the teacher's passes (rounding only).
    "eval_batch_size",
    "steps_per_execution",
    "deterministic",
    # Devices: a backup may resume on another machine.
    "strategy",
    "cpu_devices",
    # Where the teacher's logits live (the same values in memory or on disk).
    "logits_cache",
    "logits_memory_mb",
    "logits_cache_dir",
    # A floor the teacher is checked against before training.
    "min_teacher_accuracy",
    "backup_dir",
    "log_dir",
    "monitor_test",
    "export_dir",
    "overwrite",
    "saved_models_dir",
)
# Config groups that only other stages read (`kd_tf.config.GROUPS`).
NOT_RUN_GROUPS = ("tune", "predict", "lite", "compare")
# Identities of what a run read, recorded with its fields (see `run_fields`),
# and how a refusal names them.
IDENTITIES = {"data_fingerprint": "the data read", "teacher": "the teacher read"}


def run_fields(settings, stage, model_name, **identities):
    """The fields that define a training run.

    Args:
        settings: `config.fields(config)`.
        stage: the stage trained.
        model_name: the architecture trained.
        **identities: identities of what the run reads (keys of
            `IDENTITIES`), e.g. `teacher=export.fingerprint(teacher_dir)`.
    """
    names = RUN_FIELDS + (STUDENT_RUN_FIELDS if stage == "student" else ())
    return {
        "stage": stage,
        "model": model_name,
        **{name: settings[name] for name in names},
        **identities,
    }


def check(backup_dir, saved, fields):
    """Refuses a backup whose recorded `saved` fields are not the run's `fields`.

    Args:
        backup_dir: the stage's backup directory, for the message.
        saved: the fields its record holds.
        fields: the run's `run_fields`, or None (nothing is checked).

    Raises:
        ConfigError: naming each field that differs, with both values.
    """
    differing = sorted(name for name in fields or {} if saved.get(name) != fields[name])
    if not differing:
        return
    named = [name for name in differing if name not in IDENTITIES]
    shown = [
        f"{{{i + 1}}}={_shown(saved.get(name))} there, {_shown(fields[name])} here"
        for i, name in enumerate(named)
    ] + [
        f"{IDENTITIES[name]}: {_shown(saved.get(name))} there, {_shown(fields[name])} here"
        for name in differing
        if name in IDENTITIES
    ]
    raise ConfigError(
        ("backup_dir", *named),
        f"{{0}} {backup_dir} holds a backup of another run ({'; '.join(shown)}): rerun with "
        f"the same flags and data to resume it, or remove {backup_dir} (or pass another "
        "{0}) to start over",
    )


def _shown(value):
    return "unset" if value is None else value
