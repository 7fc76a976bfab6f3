"""Command line: `python -m kd_tf.main --stage=teacher|student|scratch|compare`.

Parses the flags (see `kd_tf.config`, or `--helpfull`) and runs the stage.
A user mistake ends with one line on stderr and exit status 2.
"""

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's own Python logging (SavedModel writing details) is not for users.
logging.getLogger("tensorflow").setLevel(logging.WARNING)

from absl import app, flags

from kd_tf import config, stages
from kd_tf.errors import UserError

FLAGS = flags.FLAGS
config.define_flags(FLAGS)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        stages.run(FLAGS)
    except UserError as error:
        print(f"kd_tf: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
