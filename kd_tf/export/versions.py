"""Version directories of exports, the way TF Serving expects them.

Exports of a stage live in `<saved_models_dir>/<stage>/<N>`; reports and
plots that travel with an export go to its `assets.extra` directory.
"""

import os
import re

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
        `export_dir` if given, else `next_version_dir(saved_models_dir,
        stage)`.

    Raises:
        UserError: `export_dir` already exists and is not an empty
            directory, unless `overwrite` is on and it holds an export.
    """
    if export_dir is None:
        return next_version_dir(saved_models_dir, stage)
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
