"""kd_tf: knowledge distillation on TensorFlow 2 / Keras 3.

Usage:
  python -m kd_tf.main --flagfile=flags/FILE.cfg [--flag=value ...]
  python -m kd_tf.main --stage=STAGE [--flag=value ...]
Flags given after a flag file override it.

Stages, and their main flags:
  --stage=teacher  trains the teacher on the labels and exports it
      --model (default lenet_bn) --epochs --batch_size --learning_rate --optimizer
      --lr_schedule --augment --augment_views --seed --train_examples
      --export_dir (default saved_models/teacher/N) --overwrite --backup_dir
  --stage=student  distils the teacher in --teacher_dir into the student
      --teacher_dir --model (default seed_mlp) --temperature --alpha
      --distillation_loss (kd, dkd, dist, or kd:0.5,dist:0.5) --hint_layers
      --mixup_alpha --teacher_logits --logits_cache --logits_cache_dir, and the
      teacher's flags
  --stage=scratch  the student's model on the labels only: the baseline
      --model (default seed_mlp), and the teacher's flags
  --stage=compare  teacher, student and scratch from their flag files, then
      a comparison figure and table: --teacher_flagfile --student_flagfile
      --scratch_flagfile --export_dir; other flags apply to the three runs
  --stage=tune     keras-tuner search of the student's temperature and alpha
      --teacher_dir --tune_dir --tuner --max_trials --temperature_min
      --temperature_max --alpha_min --alpha_max --tune_losses --tune_ranges,
      and the student's flags
  --stage=predict  classifies images with an export
      --model_dir --images (files, directories, globs) or --test_index,
      --output_image, --print_format=text|json
  --stage=tflite   converts an export to TFLite and measures it
      --model_dir --tflite_path --quantize (none, dynamic, int8)

Flag files:
  flags/compare.cfg      teacher, student and scratch with the files below
                         (what make demo runs)
  flags/teacher.cfg      lenet_bn, 13 epochs, random augmentation
  flags/teacher_fast.cfg lenet_narrow, 10 epochs: a teacher in about 35 % of
                         teacher.cfg's time on a CPU, 0.04 points below it
  flags/student.cfg      seed_mlp, 40 epochs, 15 cached augmented views;
                         add --teacher_dir
  flags/student_patient.cfg  seed_mlp, 200 epochs, the same distorted and
                         mixed-up images for teacher (online) and student
  flags/scratch.cfg      seed_mlp on the labels only, as the student
  flags/scratch_augmented.cfg  scratch.cfg with the student's 15 views
  flags/tune.cfg         search for student.cfg; add --teacher_dir
  flags/seed_reference.cfg     the reference demo: compare over
                         flags/seed_reference_teacher.cfg,
                         flags/seed_reference_student.cfg and
                         flags/seed_reference_scratch.cfg

Examples:
  python -m kd_tf.main --flagfile=flags/compare.cfg
  python -m kd_tf.main --flagfile=flags/student.cfg --teacher_dir=saved_models/teacher/1
  python -m kd_tf.main --stage=predict --model_dir=saved_models/student/1 --images=digit.png

A bad flag value ends with one line and exit status 1, another mistake with
one line (kd_tf: error: ...) and exit status 2, Ctrl-C with one line saying
what was written and exit status 130. Every flag: --helpfull.

For Python callers, `run_command(argv)` does what the command line does and
returns the exit status: parses the flags into a config
(`kd_tf.command_line`), runs its stage (`kd_tf.stages`) and turns every
expected failure into one line on stderr; anything else is a bug and keeps its
traceback.
"""

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from kd_tf import cpu

cpu.prefer_onednn()
# TensorFlow's own Python logging (SavedModel writing details) is not for users.
logging.getLogger("tensorflow").setLevel(logging.WARNING)

from absl import app, flags

from kd_tf import command_line
from kd_tf.errors import ConfigError, UserError

FLAGS = flags.FLAGS
command_line.define_flags(FLAGS)

EXIT_BAD_FLAG = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def execute(config):
    """Runs the stage of a validated `config`; returns the exit status.

    Returns:
        0 on success; `EXIT_USER_ERROR` after a `UserError` and
        `EXIT_INTERRUPTED` after Ctrl-C, each reported as one line on stderr.
    """
    # Here, not at the top: `--help`, `--helpfull` and flag errors are
    # answered without importing TensorFlow (see `kd_tf.choices`).
    from kd_tf import interrupts, stages

    cpu.setup()
    try:
        with interrupts.catching_interrupts():
            stages.run(config)
    except UserError as error:
        _say(f"error: {command_line.describe(error)}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt as error:
        _say(f"interrupted: {interrupts.outcome_of(error, 'nothing was written')}")
        return EXIT_INTERRUPTED
    return 0


def _config_or_status(parse):
    """`(config, None)` from `parse()`, or `(None, exit status)` after one line."""
    try:
        return parse(), None
    except (flags.Error, ConfigError) as error:
        _say_flag_error(error)
        return None, EXIT_BAD_FLAG
    except UserError as error:
        _say(f"error: {error}")
        return None, EXIT_USER_ERROR


def run_command(argv):
    """Parses `argv` like the command line, runs the stage, returns the exit status.

    Args:
        argv: kd_tf arguments without the program name, e.g.
            `["--stage=student", "--teacher_dir=saved_models/teacher/1"]`.
    """
    config, status = _config_or_status(lambda: command_line.parse(argv))
    return status if config is None else execute(config)


def parse_flags(argv):
    """absl `flags_parser` for `app.run`: parses into `FLAGS`, one line on errors."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        _say_flag_error(error)
        sys.exit(EXIT_BAD_FLAG)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config, status = _config_or_status(lambda: command_line.from_flag_values(FLAGS))
    return status if config is None else execute(config)


def _say(message):
    print(f"kd_tf: {message}", file=sys.stderr)


def _say_flag_error(error):
    text = command_line.describe(error) if isinstance(error, ConfigError) else str(error)
    message = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    _say(f"error: {message} (see --helpfull)")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
