"""The stages behind `python -m kd_tf.main --stage=...`, one module each.

- `teacher`: cross-entropy training of the teacher (`supervised`).
- `student`: distillation of a teacher (`teacher_dir`) into the student.
- `scratch`: the student's architecture on hard labels only, the baseline
  (`supervised`).
- `compare`: teacher, student and scratch in one command, then a comparison.
- `predict`: classifies image files or test images with an export.
- `tflite`: converts an export to TFLite and measures it against the export.
- `tune`: keras-tuner search over the student's temperature and alpha.

The training stages share `training_run.TrainingRun`: each restores its best
epoch on the validation split, exports a SavedModel (see `kd_tf.export`),
measures the test split once through the export reloaded from disk, and
writes `assets.extra/report.json` and `assets.extra/curves.png` into it.
Every stage trains under the strategy of `runtime.strategy` (see
`kd_tf.distribution`); on a multi-worker cluster only the chief's export,
report and logs are kept.

Usage:

```python
config = command_line.parse(["--stage=teacher", "--epochs=1", "--train_examples=512"])
report = stages.run(config)
```
"""

import functools

from kd_tf import distribution
from kd_tf.stages import compare, predict, student, supervised, tflite, tune


def run_stage(config):
    """Runs the stage `config.stage` names (see `REGISTRY`); returns its report."""
    return REGISTRY[config.stage](config)


# Stage name -> the function that runs it on a `config.Config`.
REGISTRY = {
    "teacher": supervised.teacher,
    "student": student.run,
    "scratch": supervised.scratch,
    "compare": functools.partial(compare.run, run_stage=run_stage),
    "tune": tune.run,
    "predict": predict.run,
    "tflite": tflite.run,
}


def run(config):
    """Runs the stage of `config` and returns its report.

    On a multi-worker cluster, the workers other than the chief write into
    temporary directories, removed at the end (see `kd_tf.distribution`).
    """
    try:
        return run_stage(config)
    finally:
        distribution.remove_worker_dirs()
