"""Put a finished output directory in place atomically (optionally replacing one), or a file.

An output (an export, a comparison) is written into a hidden staging sibling
of its final path, `.<name>.tmp-<pid>-<random>`, and moved into place only
when it is complete, so the final path never holds a partial output.

Without `overwrite`, the final path must be absent or an empty directory and
the staging directory is renamed onto it (`rename(2)` is atomic and refuses a
non-empty target, so a concurrent run cannot be overwritten either). With
`on_taken`, a final path that another run took meanwhile is not refused:
the output is renamed onto the next path `on_taken` names (the next free
export version, see `kd_tf.export.versions.NextVersion`).

With `overwrite`, an earlier output at the final path (a directory holding
`saved_model.pb` or `report.json`) is replaced. The sequence is:

1. the new output is complete in the staging directory;
2. `renameat2(staging, final, RENAME_EXCHANGE)` swaps the two directories in
   one atomic step: the final path now holds the new output, the staging path
   the old one;
3. the staging path (the old output) is deleted.

At every instant the final path holds a complete output, old or new; a crash
between 2 and 3 leaves the old output in the hidden staging directory, which
can be deleted. Where the file system or the OS has no `RENAME_EXCHANGE`
(not Linux, or e.g. NFS), the fallback is: rename the old output to a hidden
`.<name>.old-<pid>-<random>` sibling, rename the staging directory into
place (renaming the old one back if that fails), delete the old one. A crash
between those two renames leaves the final path empty and the complete old
output in the `.old-` sibling, from where it can be renamed back.

A single file (`write_file`) is written into a hidden sibling of the same
kind, `.<name>.tmp-<pid>-<random>`, flushed to disk, and renamed onto its final
path with `os.replace`, which atomically replaces an earlier file there; on
any failure the temporary file is removed, so the final path holds either its
earlier content or the complete new one. With `exclusive=True` the file is
never put in place of another: the temporary file is hard-linked to the final
path (`os.link`, which fails if the path exists, even if it was created a
moment ago) and then removed. Where the file system has no hard links the
final path is first claimed with `O_CREAT | O_EXCL` and the temporary file
renamed onto the claim (a kill in between leaves an empty file there).

`check_writable` makes sure an output file can be written before the work that
produces it: its directory is created if missing and a file is created and
removed there.

Usage:

```python
atomic.check_target(path, overwrite=False)  # before a long run
with atomic.staged(path, overwrite=False) as staging:
    write_everything_into(staging)
# `path` now holds what was written; on an exception nothing changed.

atomic.check_writable(file_path, "tflite_path")  # before a long run
atomic.write_file(file_path, save_to)  # save_to(temporary) writes the content
atomic.write_file(file_path, save_to, exclusive=True)  # FileExistsError if taken
```
"""

import contextlib
import ctypes
import errno
import os
import secrets
import shutil

from kd_tf import interrupts
from kd_tf.errors import ConfigError

# Files by which an earlier kd_tf output is recognised: an export (a
# SavedModel) or the summary of --stage=compare.
OUTPUT_MARKERS = ("saved_model.pb", "report.json")

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NO_EXCHANGE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)
# Failures to write that the user can fix: reported as a `UserError`.
STORAGE_ERRNOS = (
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS
)
# What renaming a directory onto a path another output took raises.
_TAKEN = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR)
# `os.link` failures of file systems without hard links.
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP)


def is_occupied(path):
    """Whether `path` exists and is not an empty directory."""
    if not os.path.lexists(path):
        return False
    return not os.path.isdir(path) or bool(os.listdir(path))


def is_output(path):
    """Whether `path` is a directory holding an earlier output (see `OUTPUT_MARKERS`)."""
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name)) for name in OUTPUT_MARKERS
    )


def check_target(path, *, overwrite):
    """Refuse a final path that the output may not take.

    Args:
        path: Final path of the output.
        overwrite: Whether an earlier output at `path` may be replaced.

    Raises:
        UserError: `path` holds something and `overwrite` is off, or
            `path` holds something that is not an earlier output.
    """
    if not is_occupied(path):
        return
    if not overwrite:
        raise _occupied_error(path)
    if not is_output(path):
        raise ConfigError(
            ("overwrite", "export_dir"),
            f"{path} is not an export (it holds no {' or '.join(OUTPUT_MARKERS)}), so "
            "{0} will not replace it: pass another {1}",
        )


@contextlib.contextmanager
def staged(path, *, overwrite, on_taken=None):
    """Stage an output next to `path` and move it into place when complete.

    Args:
        path: Final path of the output; its parents are created.
        overwrite: Whether an earlier output at `path` may be replaced (see
            the module docstring for the exact sequence).
        on_taken: Optional, without `overwrite`: a callable `on_taken(path)`
            giving another final path when `path` is taken by the time the
            output is complete (another run put its output there); the output
            goes there instead, by the same atomic rename (asked again while
            that one is taken too). Without it, a taken `path` is refused.

    Yields:
        The staging directory (a new, empty, hidden sibling of `path`) to
        write the output into.

    Raises:
        UserError: `path` may not take the output (see `check_target`,
            checked again before the move), or the disk is full or not
            writable (an `OSError` listed in `STORAGE_ERRNOS`).
        Whatever else the body raises. In every case the staging directory
            is removed and `path` is left untouched.
    """
    check_target(path, overwrite=overwrite)
    staging = _sibling(path, "tmp")
    replaced = None
    try:
        os.makedirs(os.path.dirname(staging), exist_ok=True)
        os.mkdir(staging)
        yield staging
        if on_taken is not None:
            _rename_into_free_place(staging, path, on_taken)
        else:
            check_target(path, overwrite=overwrite)
            if overwrite and is_output(path):
                replaced = _replace(staging, path)
            else:
                _rename_into_place(staging, path)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            raise storage_error(path, error.strerror) from error
        raise
    if replaced is not None:
        with interrupts.outcome(
            f"the new output is complete at {path}; the old one may remain in {replaced}"
        ):
            shutil.rmtree(replaced)


def write_file(path, write, *, exclusive=False):
    """Write one file atomically: into a hidden sibling, then moved onto `path`.

    Args:
        path: Final path of the file; its directory must exist.
        write: Callable `write(temporary)` that writes the whole content to
            the path `temporary`.
        exclusive: Never replace a file at `path` (see the module docstring).

    Raises:
        FileExistsError: `exclusive` and `path` exists.
        Whatever `write` or the move raises. In every case the temporary
            file is removed and `path` keeps what it held before.
    """
    temporary = _sibling(path, "tmp")
    try:
        write(temporary)
        flush_to_disk(temporary)
        if exclusive:
            _link_into_place(temporary, path)
        else:
            os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def flush_to_disk(path):
    """`fsync` a written file, so that it is on disk before anything refers to it."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _link_into_place(temporary, path):
    try:
        os.link(temporary, path)
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(temporary, path)


def check_writable(path, field):
    """Refuse an output file that cannot be written, before the work that makes it.

    Creates the directory of `path` if it is missing, then creates and removes
    a hidden file there.

    Args:
        path: the output file.
        field: the config field that named it, e.g. "tflite_path".

    Raises:
        ConfigError: naming `field`, with the reason (see `storage_error`).
    """
    probe = _sibling(path, "probe")
    try:
        os.makedirs(os.path.dirname(probe), exist_ok=True)
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.remove(probe)
    except OSError as error:
        raise storage_error(path, error.strerror, field) from error


def storage_error(path, reason, field="export_dir"):
    """The `UserError` for an output that could not be written to `path`;
    `field` is the config field that named it."""
    return ConfigError(
        (field,),
        f"could not write {path} ({reason}): free some space or fix the permissions, or "
        "pass another {0}; nothing was changed there",
    )


def _sibling(path, kind):
    """`.<name>.<kind>-<pid>-<random>` next to `path`."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    name = f".{os.path.basename(path)}.{kind}-{os.getpid()}-{secrets.token_hex(8)}"
    return os.path.join(parent, name)


def _rename_into_place(staging, path):
    try:
        os.rename(staging, path)
    except OSError as e:
        if e.errno in _TAKEN:
            raise _occupied_error(path) from e
        raise


def _rename_into_free_place(staging, path, on_taken):
    """Renames `staging` onto `path`, or onto the paths `on_taken` gives
    while the one tried is taken."""
    while True:
        try:
            os.rename(staging, path)
            return
        except OSError as e:
            if e.errno not in _TAKEN:
                raise
        path = on_taken(path)


def _occupied_error(path):
    return ConfigError(
        ("export_dir", "overwrite"),
        f"{path} already holds an export: pass another {{0}}, or {{1}} to replace it",
    )


def _replace(staging, path):
    """Move the output in `staging` to `path` in place of the one there.

    Returns:
        The hidden directory now holding the old output, to delete.
    """
    if _exchange(staging, path):
        return staging
    old = _sibling(path, "old")
    os.rename(path, old)
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(old, path)
        raise
    return old


def _exchange(a, b):
    """Atomically swap two paths with `renameat2(RENAME_EXCHANGE)`.

    Returns:
        True when swapped; False when the OS or the file system cannot.
    """
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), b)
