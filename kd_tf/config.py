"""The typed, validated configuration of a kd_tf run.

A `Config` is built once, at the edge (the command line turns its flags into
one, see `kd_tf.command_line`), validated in one place (`validate`), and never
changed: library code takes the part it needs (`config.optimization`,
`config.data`, ...) or plain keyword arguments. Every leaf field is named as
the flag that sets it, so `--batch_size` sets `optimization.batch_size`, and
`fields(config)` lists them all flat for the run report.

Usage:

```python
config = Config(stage="scratch", optimization=OptimizationConfig(epochs=2))
config = with_fields(config, train_examples=512, seed=3)
validate(config)      # raises ConfigError, naming the field
stages.run(config)
```
"""

import dataclasses

from kd_tf import choices, loss_flags
from kd_tf.errors import ConfigError

STAGES = ("teacher", "student", "scratch", "compare", "tune", "predict", "tflite")
# How `predict` prints a prediction: one text line, or one JSON object a line.
PRINT_FORMATS = ("text", "json")
OPTIMIZERS = ("adam", "adamw", "adadelta", "sgd")
SCHEDULES = ("cosine", "constant")
# The sub-runs of --stage=compare, in the order they run.
COMPARE_STAGES = ("teacher", "student", "scratch")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The data set, its splits and the training images' augmentation."""

    dataset: str = "mnist"
    data_source: str = "auto"
    tfds_data_dir: str | None = None
    idx_dir: str | None = None
    data_dir: str | None = None
    image_size: tuple[int, int] | None = None
    test_fraction: float = 0.2
    # The largest split (decoded images, MiB) held in memory; larger ones are
    # read from their files while training (see `kd_tf.data.streaming`).
    data_memory_mb: int = choices.DEFAULT_MEMORY_MB
    # None: 5000, or a twelfth of the training split when that is smaller
    # (see `kd_tf.data.splits.default_validation_examples`).
    validation_examples: int | None = None
    train_examples: int | None = None
    augment: bool = False
    augment_views: int = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The architecture to train; None picks the stage's default."""

    model: str | None = None


@dataclasses.dataclass(frozen=True)
class OptimizationConfig:
    """Epochs, batches, the optimiser and its learning-rate schedule."""

    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1024
    steps_per_execution: int = 1
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.5
    weight_decay: float = 0.0


@dataclasses.dataclass(frozen=True)
class DistillationConfig:
    """The teacher, how its logits reach the student, and the loss: T, alpha,
    the weighted terms (`kd_tf.distillation_losses`) and their settings, the
    hints (`kd_tf.hints`) and mixup."""

    temperature: float = 4.0
    alpha: float = 0.9
    # (loss, weight) pairs of `distillation_losses.LOGIT_LOSSES`.
    distillation_loss: tuple[tuple[str, float], ...] = (("kd", 1.0),)
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dkd_warmup_epochs: int = 20
    dist_beta: float = 1.0
    dist_gamma: float = 1.0
    # (teacher layer, student layer) pairs; `hints.PENULTIMATE` for either.
    hint_layers: tuple[tuple[str, str], ...] = ()
    hint_weight: float = 1.0
    mixup_alpha: float = 0.0
    # One teacher, or an ensemble (see `kd_tf.teacher`), in this order.
    teacher_dir: tuple[str, ...] | None = None
    # "auto": picked from the data for a teacher taking float images (see
    # `kd_tf.teacher_check`).
    teacher_pixel_range: str = "auto"
    teacher_output: str = "auto"
    # For each of the data set's classes, the teacher's output that predicts
    # it; None: the teacher's own order.
    teacher_class_order: tuple[int, ...] | None = None
    # None: `teacher_check.default_floor`; 0: the teacher is never refused.
    min_teacher_accuracy: float | None = None
    teacher_logits: str = "auto"
    logits_cache: str = "auto"
    logits_memory_mb: int = 2048
    logits_cache_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Seed, determinism, precision, devices and machines, backups and logs."""

    seed: int = 0
    deterministic: bool = True
    precision: str = "auto"
    strategy: str = "auto"
    cpu_devices: int = 0
    backup_dir: str | None = None
    log_dir: str = "logs"
    monitor_test: bool = False


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Where a training stage's export goes."""

    export_dir: str | None = None
    overwrite: bool = False
    saved_models_dir: str = "saved_models"


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """The keras-tuner search of `--stage=tune`."""

    tuner: str = "bayesian"
    max_trials: int = 12
    executions_per_trial: int = 1
    tune_dir: str = "tune"
    temperature_min: float = 1.0
    temperature_max: float = 20.0
    alpha_min: float = 0.1
    alpha_max: float = 0.9
    # Losses a trial chooses from (empty: `distillation_loss`), and
    # (setting, min, max) ranges of `loss_flags.TUNABLE_SETTINGS`.
    tune_losses: tuple[str, ...] = ()
    tune_ranges: tuple[tuple[str, float, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """The export `predict` and `tflite` read, and what `predict` classifies."""

    model_dir: str | None = None
    images: str | None = None
    test_index: tuple[int, ...] | None = None
    output_image: str | None = None
    print_format: str = "text"


@dataclasses.dataclass(frozen=True)
class LiteConfig:
    """The TFLite file of `--stage=tflite` and its quantisation."""

    tflite_path: str | None = None
    quantize: str = "none"


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """The flag files of `--stage=compare`'s sub-runs and, composed from them
    at the edge, the sub-runs' configs: `runs` holds `(stage, Config)` pairs."""

    teacher_flagfile: str = "flags/teacher.cfg"
    student_flagfile: str = "flags/student.cfg"
    scratch_flagfile: str = "flags/scratch.cfg"
    runs: tuple = dataclasses.field(default=(), compare=False)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything one run needs, grouped by concern."""

    stage: str = "teacher"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimization: OptimizationConfig = OptimizationConfig()
    distillation: DistillationConfig = DistillationConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    export: ExportConfig = ExportConfig()
    tune: TuneConfig = TuneConfig()
    predict: PredictConfig = PredictConfig()
    lite: LiteConfig = LiteConfig()
    compare: CompareConfig = CompareConfig()


GROUPS = tuple(
    field.name for field in dataclasses.fields(Config) if dataclasses.is_dataclass(field.type)
)
# Fields that hold composed values rather than settings.
_NOT_SETTINGS = ("runs",)


def _group_fields(group_type):
    return [f for f in dataclasses.fields(group_type) if f.name not in _NOT_SETTINGS]


# Leaf field name -> its group (None for `stage`).
FIELD_GROUPS = {"stage": None} | {
    f.name: field.name
    for field in dataclasses.fields(Config)
    if field.name in GROUPS
    for f in _group_fields(field.type)
}


def _plain(value):
    """`value` with its tuples, nested ones too, as lists (what JSON gives back)."""
    return [_plain(item) for item in value] if isinstance(value, tuple) else value


def fields(config):
    """Every setting of `config` as a flat `{field: value}` dict, sorted by name
    (tuples as lists): the run report's `flags`."""
    values = {}
    for name, group in FIELD_GROUPS.items():
        values[name] = _plain(getattr(config if group is None else getattr(config, group), name))
    return dict(sorted(values.items()))


def _tupled(value):
    """`value` with its lists, nested ones too, as tuples (as fields hold them)."""
    return tuple(_tupled(item) for item in value) if isinstance(value, list) else value


def with_fields(config, **values):
    """A copy of `config` with leaf fields replaced, named flat (`epochs=2`);
    lists (as `fields` gives them) become tuples."""
    values = {name: _tupled(value) for name, value in values.items()}
    unknown = set(values) - set(FIELD_GROUPS)
    if unknown:
        raise TypeError(f"unknown config fields: {sorted(unknown)}")
    changes = {name: value for name, value in values.items() if FIELD_GROUPS[name] is None}
    for group in GROUPS:
        group_values = {n: v for n, v in values.items() if FIELD_GROUPS[n] == group}
        if group_values:
            changes[group] = dataclasses.replace(getattr(config, group), **group_values)
    return dataclasses.replace(config, **changes)


TEST_INDEX_PROBLEM = "{0} must be a comma-separated list of integers >= 0"
IMAGE_SIZE_PROBLEM = "{0} must be two integers >= 1, H,W (e.g. 64,64)"
CLASS_ORDER_PROBLEM = (
    "{0} must list each of the teacher's outputs 0..N-1 once, for the data set's classes in "
    "order (e.g. 1,0,2), or name a file that does"
)


def _at_least(minimum):
    return lambda v: v >= minimum, f"{{0}} must be >= {minimum}"


_IN_UNIT_INTERVAL = (lambda v: 0.0 <= v <= 1.0, "{0} must be in [0, 1]")


# field -> (check on its value, problem); None values pass (optional fields).
_RULES = {
    "epochs": _at_least(1),
    "batch_size": _at_least(1),
    "eval_batch_size": _at_least(1),
    "steps_per_execution": _at_least(1),
    "learning_rate": (lambda v: v > 0, "{0} must be > 0"),
    "warmup_epochs": _at_least(0),
    "weight_decay": _at_least(0),
    "temperature": (lambda v: v > 0, "{0} must be > 0 (e.g. 4)"),
    "alpha": _IN_UNIT_INTERVAL,
    "augment_views": _at_least(0),
    "logits_memory_mb": _at_least(0),
    "data_memory_mb": _at_least(0),
    "validation_examples": _at_least(1),
    "train_examples": _at_least(1),
    "test_index": (lambda v: len(v) > 0 and min(v) >= 0, TEST_INDEX_PROBLEM),
    "image_size": (lambda v: len(v) == 2 and min(v) >= 1, IMAGE_SIZE_PROBLEM),
    "teacher_class_order": (lambda v: sorted(v) == list(range(len(v))), CLASS_ORDER_PROBLEM),
    "teacher_dir": (
        lambda v: all(v),
        "{0} must be a teacher (an export, a SavedModel or a .keras file) or a comma-separated "
        "list of them, without empty entries",
    ),
    "min_teacher_accuracy": _IN_UNIT_INTERVAL,
    "test_fraction": (lambda v: 0 < v < 1, "{0} must be in (0, 1)"),
    "cpu_devices": _at_least(0),
    "max_trials": _at_least(1),
    "executions_per_trial": _at_least(1),
    "temperature_min": (lambda v: v > 0, "{0} must be > 0 (e.g. 1)"),
    "alpha_min": _IN_UNIT_INTERVAL,
    "alpha_max": _IN_UNIT_INTERVAL,
    "model": (choices.is_model, choices.MODEL_PROBLEM),
    **loss_flags.RULES,
}
CHOICES = {
    "stage": STAGES,
    "optimizer": OPTIMIZERS,
    "lr_schedule": SCHEDULES,
    "teacher_logits": choices.TEACHER_LOGITS_MODES,
    "teacher_pixel_range": choices.TEACHER_PIXEL_RANGES,
    "teacher_output": choices.TEACHER_OUTPUTS,
    "logits_cache": choices.LOGITS_CACHES,
    "data_source": choices.DATA_SOURCES,
    "quantize": choices.QUANTIZATIONS,
    "print_format": PRINT_FORMATS,
    "strategy": choices.STRATEGIES,
    "precision": choices.PRECISIONS,
    "tuner": choices.TUNERS,
}
# (fields, check on their values in order, problem).
_COMBINATION_RULES = (
    (("temperature_min", "temperature_max"), lambda low, high: low < high, "{0} must be < {1}"),
    (("alpha_min", "alpha_max"), lambda low, high: low < high, "{0} must be < {1}"),
    (
        ("cpu_devices", "strategy"),
        lambda devices, strategy: strategy != "multi_worker" or devices <= 1,
        "{0} cannot be combined with {1}=multi_worker: each worker trains on its GPUs or "
        "its one CPU",
    ),
    (
        ("hint_layers", "teacher_dir"),
        lambda pairs, teachers: not pairs or len(teachers or ()) <= 1,
        "{0} reads the layers of one teacher, and {1} lists several: pass one teacher with "
        "{0}, or drop {0} for the ensemble",
    ),
    (
        ("teacher_class_order", "teacher_dir"),
        lambda order, teachers: order is None or len(teachers or ()) <= 1,
        "{0} reorders the outputs of one teacher, and {1} lists several: distil from that "
        "teacher alone, or give the ensemble teachers in the data's class order",
    ),
    *loss_flags.COMBINATION_RULES,
)


def _shown(name, value):
    """`value` of field `name` as an error shows it (as its flag is written:
    a list with commas)."""
    if name in loss_flags.FORMS:
        return loss_flags.format_value(name, value)
    return ",".join(map(str, value)) if isinstance(value, list) else value


def validate(config):
    """Checks every field of `config` (and of compare's sub-runs).

    Raises:
        ConfigError: naming the first field (or fields) whose value is wrong.
    """
    values = fields(config)
    for name, value in values.items():
        if value is None:
            continue
        if name in CHOICES and value not in CHOICES[name]:
            raise ConfigError(
                (name,), f"{{0}} must be one of {', '.join(CHOICES[name])}", (value,)
            )
        if name in _RULES and not _RULES[name][0](value):
            raise ConfigError((name,), _RULES[name][1], (_shown(name, value),))
    for names, check, problem in _COMBINATION_RULES:
        combination = tuple(values[name] for name in names)
        if not check(*combination):
            raise ConfigError(names, problem, tuple(map(_shown, names, combination)))
    for _, run in config.compare.runs:
        validate(run)
