"""Version directories of exports, the way TF Serving expects them.

Exports of a stage live in `<saved_models_dir>/<stage>/<N>`; reports and
plots that travel with an export go to its `assets.extra` directory. The
version of a run is the next free one when its export is complete
(`NextVersion`), so that a run started meanwhile that exported first keeps
its version. A `--export_dir` that is a symbolic link is resolved once,
before training (`resolve_export_dir`): the export goes where it points.

Usage:

```python
export_dir = resolve_export_dir(config.export_dir, "saved_models", "teacher")  # before training
version = NextVersion("saved_models", "teacher")  # when the export is complete
export_model(model, version.path, check_images=images, on_taken=version.taken)
version.path  # e.g. "saved_models/teacher/3"
```
"""

import os
import re

from absl import logging

from kd_tf import atomic
from kd_tf.export.contract import ASSETS_EXTRA

_VERSION_PATTERN = re.compile(r"[0-9]+")


def next_version_dir(saved_models_dir, stage):
    """Return the next free TF Serving version directory of a stage.

    Args:
        saved_models_dir: Root directory of all exports.
        stage: Name of the stage (e.g. `"teacher"`); exports of a stage live
            in `<saved_models_dir>/<stage>/<N>`.

    Returns:
        `"<saved_models_dir>/<stage>/<N>"`, where `N` is one more than the
        largest integer name in the stage directory (names that are not
        integers are ignored), or 1 if there is none. The directory is not
        created.
    """
    stage_dir = os.path.join(saved_models_dir, stage)
    versions = []
    if os.path.isdir(stage_dir):
        versions = [int(name) for name in os.listdir(stage_dir) if _VERSION_PATTERN.fullmatch(name)]
    return os.path.join(stage_dir, str(max(versions, default=0) + 1))


class NextVersion:
    """The next free version directory of a stage, picked when it is taken.

    Args:
        saved_models_dir: Root directory of all exports.
        stage: Name of the stage, see `next_version_dir()`.

    Attributes:
        path: the version directory to export to: the next free one when
            created, the one the export went to after it (`taken` moves on).
    """

    def __init__(self, saved_models_dir, stage):
        self.saved_models_dir, self.stage = saved_models_dir, stage
        self.path = next_version_dir(saved_models_dir, stage)

    def taken(self, path):
        """`atomic.staged`'s `on_taken`: `path` was taken by another run's
        export meanwhile; moves on to the next free version, logged."""
        self.path = next_version_dir(self.saved_models_dir, self.stage)
        logging.info(
            "%s was taken by another run meanwhile: exporting to %s instead", path, self.path
        )
        return self.path


def resolve_export_dir(export_dir, saved_models_dir, stage, overwrite=False):
    """Pick the directory an export will be written to.

    Call it before training, so that an unusable `export_dir` is reported
    before any work is done.

    Args:
        export_dir: Directory requested by the user, or `None` to use the
            next version directory of `stage`.
        saved_models_dir: Root directory of all exports.
        stage: Name of the stage, see `next_version_dir()`.
        overwrite: Whether an earlier export at `export_dir` may be
            replaced.

    Returns:
        `export_dir` if given (where it points, if it is a symbolic link:
        the export then goes there, replacing with `overwrite` the export
        it points to, and the link stays), else `next_version_dir(
        saved_models_dir, stage)`, which the export may move past (see
        `NextVersion`).

    Raises:
        UserError: `export_dir` already exists and is not an empty
            directory, unless `overwrite` is on and it holds an export.
    """
    if export_dir is None:
        return next_version_dir(saved_models_dir, stage)
    if os.path.islink(export_dir):
        target = os.path.realpath(export_dir)
        logging.info("%s is a link to %s: the export goes there", export_dir, target)
        export_dir = target
    atomic.check_target(export_dir, overwrite=overwrite)
    return export_dir


def assets_extra_dir(export_dir):
    """Return the `assets.extra` directory of an export, creating it.

    TF Serving ignores `assets.extra`, so it is the place for reports and
    plots that travel with an export.

    Args:
        export_dir: Directory of a SavedModel.

    Returns:
        `"<export_dir>/assets.extra"`.
    """
    path = os.path.join(export_dir, ASSETS_EXTRA)
    os.makedirs(path, exist_ok=True)
    return path
