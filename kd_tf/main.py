"""Command line: `python -m kd_tf.main --stage=STAGE [--flagfile=flags/STAGE.cfg] ...`.

Parses the flags into a config (`kd_tf.command_line`) and runs its stage
(`kd_tf.stages`). Every expected failure ends with one line on stderr and no
traceback:

- a bad flag value: `kd_tf: error: ...`, exit status 1;
- a user mistake (`kd_tf.errors.UserError`): `kd_tf: error: ...`, exit status 2;
- Ctrl-C (SIGINT): `kd_tf: interrupted: ...`, exit status 130.

Anything else is a bug and keeps its traceback.
"""

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's own Python logging (SavedModel writing details) is not for users.
logging.getLogger("tensorflow").setLevel(logging.WARNING)

from absl import app, flags

from kd_tf import command_line, interrupts, stages
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
    try:
        with interrupts.catching_interrupts():
            stages.run(config)
    except UserError as error:
        _say(f"error: {command_line.describe(error)}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _say("interrupted: no partial export was written")
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
