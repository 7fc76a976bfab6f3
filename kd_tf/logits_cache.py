"""The teacher's logits computed once, kept in memory or in a file on disk.

In the student stage's `cached` mode the teacher runs once over each view of
each split, and its logits, `[N, K, classes]` (`LogitsTable`), are joined to
the images by index and view as the training stream reads them
(`kd_tf.pipelines`). Images are never copied: the views are drawn again from
`(seed, view, index)` when an example is read. Logits that fit in
`--logits_memory_mb` stay in memory; larger ones (or all, with
`--logits_cache=disk`) are written to a file and read back through
`numpy.memmap`, so memory holds only the pages in use.

The file of a run lives in a `ShardDirectory`, `kd_tf_logits_<pid>_<random>`
in `--logits_cache_dir`, removed when the run ends, however it ends. A killed
run cannot remove its own: the next run that creates a `ShardDirectory` in the
same directory removes those whose process is gone (`remove_abandoned`).

Usage:

```python
if logits_cache.resolve_cache("auto", len(split) * views, classes, 2048) == "disk":
    with logits_cache.ShardDirectory(None) as shards:  # the system's temp directory
        table = logits_cache.LogitsTable.compute(
            adapter.logits, classes, split, num_views=4, seed=0,
            path=f"{shards.path}/train.npy")
        train = pipelines.training_dataset(split, 128, seed=0, views=4, logits=table)
```
"""

import contextlib
import os
import re
import shutil
import tempfile
import weakref

import numpy as np
import tensorflow as tf
from absl import logging

from kd_tf import atomic, choices, locks, pipelines, progress
from kd_tf.errors import ConfigError

LOGITS_CACHES = choices.LOGITS_CACHES

SHARD_DIR_PREFIX = "kd_tf_logits_"
_SHARD_DIR = re.compile(rf"^{SHARD_DIR_PREFIX}(\d+)_")


def logits_megabytes(num_examples, width):
    """Size of float32 rows `[num_examples, width]` (logits, and hint
    features) in MiB."""
    return num_examples * width * 4 / 2**20


def resolve_cache(mode, num_examples, width, memory_mb):
    """Picks where cached logits (and hint features) live.

    Args:
        mode: "auto", "memory" or "disk".
        num_examples: examples whose logits are cached.
        width: floats per example: the logits, and the hint features.
        memory_mb: with "auto", the largest logits (MiB) kept in memory.

    Returns:
        "memory" or "disk".
    """
    if mode not in LOGITS_CACHES:
        raise ValueError(f"logits cache must be one of {LOGITS_CACHES}, got {mode!r}")
    if mode == "auto":
        return "disk" if logits_megabytes(num_examples, width) > memory_mb else "memory"
    return mode


class LogitsTable:
    """The teacher's float32 logits of view k of example i, `[N, K, classes]`,
    held in memory or in a file of a `ShardDirectory` (`numpy.memmap`), and
    joined to their images by index and view (`lookup`).

    Usage:

    ```python
    table = LogitsTable.compute(adapter.logits, classes, splits.train, num_views=4, seed=0)
    logits = table.lookup(indices, views)   # in a tf.data map
    ```
    """

    def __init__(self, array):
        self.array = array

    @classmethod
    def compute(cls, outputs, width, split, *, num_views, seed, batch_size=1024, path=None):
        """Runs `outputs` (the teacher's: `images -> float32 [batch, width]`,
        e.g. `teacher_adapter.TeacherAdapter.logits`, or `hints.TeacherRows`
        for logits and hint features) over each view of `split`
        (`pipelines.views_in_order`), view 0 being the images themselves,
        into memory or, with `path`, into a file there (see `allocated_file`).
        The views are drawn on tf.data's threads while the teacher runs on
        the batches drawn before.

        Raises:
            ConfigError: the file does not fit on its disk."""
        shape = (len(split), max(1, num_views), int(width))
        array = np.zeros(shape, np.float32) if path is None else allocated_file(path, shape)
        with progress.Progress("teacher logits", shape[0] * shape[1], "views") as shown:
            for views, indices, images in pipelines.views_in_order(
                split, shape[1], seed, batch_size
            ):
                array[indices.numpy(), views.numpy()] = outputs(images).numpy()
                shown.add(len(indices))
        if path is not None:
            array.flush()
        return cls(array)

    @property
    def megabytes(self):
        return self.array.nbytes / 2**20

    def lookup(self, indices, views):
        """The logits `[batch, classes]` of examples `indices` in views `views`
        (int64 tensors `[batch]`).

        The table is read through `tf.numpy_function`, never embedded in the
        graph: a `tf.data` pipeline's graph is copied by each of its rewrites,
        and a 52 MiB table as a constant cost 500 MiB (measured).
        """
        positions = tf.stack([indices, tf.cast(views, tf.int64)], axis=1)
        logits = tf.numpy_function(
            lambda where: np.asarray(self.array[where[:, 0], where[:, 1]]),
            [positions],
            tf.float32,
            stateful=False,
        )
        return tf.ensure_shape(logits, [None, self.array.shape[-1]])


def allocated_file(path, shape):
    """A zeroed float32 `.npy` file of `shape` at `path`, opened as a
    `numpy.memmap`, its disk blocks allocated before any is written.

    A memmap's file is sparse: its pages get disk blocks only when first
    written, and writing one where the disk is full kills the process with
    SIGBUS. `posix_fallocate` reserves every block up front (or fails with
    ENOSPC), so that a full disk is one error here, never a crash later.

    Raises:
        ConfigError: the file does not fit (naming `logits_cache_dir`); it
            is removed.
    """
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        if error.errno not in atomic.STORAGE_ERRNOS:
            raise
        megabytes = logits_megabytes(int(np.prod(shape[:-1])), shape[-1])
        raise ConfigError(
            ("logits_cache_dir", "logits_cache"),
            f"could not write the teacher's logits ({megabytes:.1f} MiB) to {path} "
            f"({error.strerror}): free some space there, pass another {{0}}, or {{1}}=memory",
        ) from None
    return array


class ShardDirectory:
    """A fresh directory for one run's shards, removed when the run ends.

    Created in `parent` (the system's temporary directory if None) as
    `kd_tf_logits_<pid>_<random>`; this process holds an exclusive `flock` on
    it while it lives. `close()` (or leaving the `with` block, or the end of
    the interpreter) removes it. Creating one first removes the directories
    of ended runs (`remove_abandoned`).

    Args:
        parent: `--logits_cache_dir`, or None.

    Attributes:
        path: the directory.

    Raises:
        ConfigError: `parent` does not exist or cannot be written.
    """

    def __init__(self, parent):
        parent = parent or tempfile.gettempdir()
        if not os.path.isdir(parent):
            raise ConfigError(
                ("logits_cache_dir",),
                f"{{0}} {parent} does not exist: create it or pass another {{0}}",
            )
        remove_abandoned(parent)
        try:
            self.path = tempfile.mkdtemp(prefix=f"{SHARD_DIR_PREFIX}{os.getpid()}_", dir=parent)
        except OSError as error:
            where = error.filename or parent
            raise atomic.storage_error(where, error.strerror, "logits_cache_dir") from error
        lock = os.open(self.path, os.O_RDONLY)
        locks.try_lock(lock)
        self._remove = weakref.finalize(self, _remove_locked, self.path, lock)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Removes the directory and its shards (once)."""
        self._remove()


def remove_abandoned(parent):
    """Removes the shard directories in `parent` whose run has ended.

    A directory is abandoned when the process its name records no longer
    runs and no process holds its lock (a process of another PID namespace
    sharing the directory does). A directory of a live process is kept.
    """
    for name in os.listdir(parent):
        match = _SHARD_DIR.match(name)
        path = os.path.join(parent, name)
        if not match or not os.path.isdir(path) or locks.process_alive(int(match[1])):
            continue
        try:
            lock = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if locks.try_lock(lock):
                shutil.rmtree(path, ignore_errors=True)
                logging.info("removed the logit shards of an ended run: %s", path)
        finally:
            os.close(lock)


def _remove_locked(path, lock):
    shutil.rmtree(path, ignore_errors=True)
    os.close(lock)
