"""Command line: `python -m kd_tf.main --stage=teacher|student|scratch|compare`.

Parses the flags (see `kd_tf.config`, or `--helpfull`) and runs the stage.
Every expected failure ends with one line on stderr and no traceback:

- a bad flag value: `kd_tf: error: ...`, exit status 1;
- a user mistake (`kd_tf.errors.UserError`): `kd_tf: error: ...`, exit status 2;
- Ctrl-C (SIGINT): `kd_tf: interrupted: ...`, exit status 130.

Anything else is a bug and keeps its traceback.

Usage (in-process, e.g. from tests):

```python
status = main.run_command(["--stage=student", "--teacher_dir=saved_models/teacher/1"])
```
"""

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's own Python logging (SavedModel writing details) is not for users.
logging.getLogger("tensorflow").setLevel(logging.WARNING)

from absl import app, flags

from kd_tf import config, interrupts, stages
from kd_tf.errors import UserError

FLAGS = flags.FLAGS
config.define_flags(FLAGS)

EXIT_BAD_FLAG = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def execute(settings):
    """Run the stage of parsed `settings` and return the exit status.

    Args:
        settings: parsed flags (see `kd_tf.config`).

    Returns:
        0 on success; `EXIT_USER_ERROR` after a `UserError` and
        `EXIT_INTERRUPTED` after Ctrl-C, each reported as one line on stderr.
    """
    try:
        with interrupts.catching_interrupts():
            stages.run(settings)
    except UserError as error:
        _say(f"error: {error}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _say("interrupted: no partial export was written")
        return EXIT_INTERRUPTED
    return 0


def run_command(argv):
    """Parse `argv` like the command line, run the stage, return the exit status.

    Args:
        argv: kd_tf arguments without the program name.

    Returns:
        The exit status the command line would have: `EXIT_BAD_FLAG` for a
        flag error, otherwise that of `execute()`.
    """
    try:
        settings = config.parse(argv)
    except flags.Error as error:
        _say_flag_error(error)
        return EXIT_BAD_FLAG
    return execute(settings)


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
    return execute(FLAGS)


def _say(message):
    print(f"kd_tf: {message}", file=sys.stderr)


def _say_flag_error(error):
    message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    _say(f"error: {message} (see --helpfull)")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
