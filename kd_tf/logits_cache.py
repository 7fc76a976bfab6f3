"""The teacher's logits computed once, kept in memory or streamed from disk.

In the student stage's `cached` mode the teacher runs once over each split.
Logits that fit in `--logits_memory_mb` stay in memory and travel in the same
`tf.data` element as their images (`kd_tf.pipelines`). Larger ones (or all, with
`--logits_cache=disk`) are written batch by batch, together with their images
and labels, into TFRecord shards and read back by a streaming pipeline: neither
the logits nor a second copy of the images is ever held in memory whole. The
training stream is a function of the seed and the epoch alone, as the
in-memory one (see `training_stream`).

The shards of a run live in a `ShardDirectory`, `kd_tf_logits_<pid>_<random>`
in `--logits_cache_dir`, removed when the run ends, however it ends. A killed
run cannot remove its own: the next run that creates a `ShardDirectory` in the
same directory removes those whose process is gone (`remove_abandoned`).

Usage:

```python
if logits_cache.resolve_cache("auto", len(images), teacher.num_classes, 2048) == "disk":
    with logits_cache.ShardDirectory(None) as shards:  # the system's temp directory
        paths = logits_cache.write_shards(teacher, images, labels, f"{shards.path}/train")
        train = logits_cache.training_stream(paths, 128, seed=0, image_shape=(28, 28, 1),
                                             num_classes=10)
```
"""

import errno
import fcntl
import os
import re
import shutil
import tempfile
import weakref

import tensorflow as tf
from absl import logging

from kd_tf import atomic, pipelines
from kd_tf.errors import ConfigError

LOGITS_CACHES = ("auto", "memory", "disk")
# Examples per TFRecord shard, and the window of examples the training stream
# permutes at a time (see `training_stream`).
EXAMPLES_PER_SHARD = 16384
SHUFFLE_BUFFER = 16384
# Shards read at once while training.
INTERLEAVE_SHARDS = 4

SHARD_DIR_PREFIX = "kd_tf_logits_"
_SHARD_DIR = re.compile(rf"^{SHARD_DIR_PREFIX}(\d+)_")

_FEATURES = {
    "images": tf.io.FixedLenFeature([], tf.string),
    "labels": tf.io.FixedLenFeature([], tf.string),
    "logits": tf.io.FixedLenFeature([], tf.string),
}


def logits_megabytes(num_examples, num_classes):
    """Size of float32 logits `[num_examples, num_classes]` in MiB."""
    return num_examples * num_classes * 4 / 2**20


def resolve_cache(mode, num_examples, num_classes, memory_mb):
    """Picks where cached logits live.

    Args:
        mode: "auto", "memory" or "disk".
        num_examples: examples whose logits are cached.
        num_classes: logits per example.
        memory_mb: with "auto", the largest logits (MiB) kept in memory.

    Returns:
        "memory" or "disk".
    """
    if mode not in LOGITS_CACHES:
        raise ValueError(f"logits cache must be one of {LOGITS_CACHES}, got {mode!r}")
    if mode == "auto":
        return "disk" if logits_megabytes(num_examples, num_classes) > memory_mb else "memory"
    return mode


def write_shards(teacher, images, labels, directory, *, batch_size=1024):
    """Runs the teacher over `images` and writes images, labels and logits to
    TFRecord shards, one record per batch, in order.

    Args:
        teacher: a `kd_tf.export.ServingModel` (or anything with `.logits`).
        images: uint8 array `[N, H, W, C]`.
        labels: int array `[N]`.
        directory: where the shards go (created; must not hold shards yet).
        batch_size: images per teacher call and per record.

    Returns:
        The shard paths, in order.
    """
    os.makedirs(directory, exist_ok=True)
    if os.listdir(directory):
        raise ValueError(f"{directory} is not empty: pass a fresh directory for the shards")
    examples_per_shard = max(batch_size, EXAMPLES_PER_SHARD // batch_size * batch_size)
    paths = []
    for shard_start in range(0, len(images), examples_per_shard):
        path = os.path.join(directory, f"logits-{len(paths):05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            shard_end = min(shard_start + examples_per_shard, len(images))
            for start in range(shard_start, shard_end, batch_size):
                batch = images[start : min(start + batch_size, shard_end)]
                logits = teacher.logits(tf.constant(batch))
                writer.write(_record(batch, labels[start : start + len(batch)], logits))
        paths.append(path)
    return paths


def _record(images, labels, logits):
    def feature(tensor):
        serialized = tf.io.serialize_tensor(tensor).numpy()
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[serialized]))

    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "images": feature(tf.constant(images, tf.uint8)),
                "labels": feature(tf.constant(labels, tf.int64)),
                "logits": feature(tf.cast(logits, tf.float32)),
            }
        )
    )
    return example.SerializeToString()


def _examples(records, image_shape, num_classes):
    """Record batches -> examples `((image, logits), label)`."""

    def parse(record):
        parsed = tf.io.parse_single_example(record, _FEATURES)
        images = tf.ensure_shape(
            tf.io.parse_tensor(parsed["images"], tf.uint8), [None, *image_shape]
        )
        labels = tf.ensure_shape(tf.io.parse_tensor(parsed["labels"], tf.int64), [None])
        logits = tf.ensure_shape(
            tf.io.parse_tensor(parsed["logits"], tf.float32), [None, num_classes]
        )
        return (images, logits), labels

    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def training_stream(shards, batch_size, *, seed, image_shape, num_classes):
    """An endless, shuffled, batched stream of `((images, teacher_logits), labels)`
    read from the shards.

    Like `pipelines.training_dataset`, the stream is a function of `seed`
    alone: pass e (an epoch) reads the shards in the order of a permutation
    drawn from `(seed, e)`, up to `INTERLEAVE_SHARDS` at once, and permutes
    each window of `SHUFFLE_BUFFER` consecutive examples with a permutation
    drawn from `(seed, e)` folded with the window's index; each example is
    seen once per pass. Every iterator over the dataset yields the same
    batches (each keras-tuner trial, Keras's extra iterator under a
    strategy), and `skip(n)` continues exactly where batch n left off (a
    resumed run).

    Args:
        shards: paths from `write_shards`.
        batch_size: global batch size.
        seed: shuffle seed.
        image_shape: `(H, W, C)`.
        num_classes: logits per example.

    Returns:
        A `tf.data.Dataset`, elements as `pipelines.training_dataset`'s.
    """
    paths = tf.constant(shards)
    window = SHUFFLE_BUFFER

    def one_pass(epoch):
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(
            tf.range(len(shards), dtype=tf.int64), seed=key
        )
        records = tf.data.Dataset.from_tensor_slices(tf.gather(paths, order)).interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(INTERLEAVE_SHARDS, len(shards)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        windows = _examples(records, image_shape, num_classes).batch(window)
        return (
            tf.data.Dataset.zip((windows, tf.data.Dataset.counter()))
            .map(lambda examples, index: _permuted(examples, key, index))
            .unbatch()
        )

    return pipelines.prefetched(tf.data.Dataset.counter().flat_map(one_pass).batch(batch_size))


def _permuted(examples, key, index):
    """`examples` (a window) in the order of a permutation drawn from `key`
    folded with `index`."""
    count = tf.shape(examples[1], out_type=tf.int64)[0]
    order = tf.random.experimental.stateless_shuffle(
        tf.range(count), seed=tf.random.experimental.stateless_fold_in(key, index)
    )
    return tf.nest.map_structure(lambda t: tf.gather(t, order), examples)


def evaluation_stream(shards, batch_size, *, image_shape, num_classes):
    """A finite stream of `((images, teacher_logits), labels)` in the order the
    shards were written, batched by `batch_size`.

    Args:
        shards: paths from `write_shards`.
        batch_size: examples per batch.
        image_shape: `(H, W, C)`.
        num_classes: logits per example.

    Returns:
        A `tf.data.Dataset`, elements as `pipelines.evaluation_dataset`'s.
    """
    records = tf.data.TFRecordDataset(shards)
    return pipelines.prefetched(_examples(records, image_shape, num_classes).batch(batch_size))


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
        _try_lock(lock)
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
        if not match or not os.path.isdir(path) or _alive(int(match[1])):
            continue
        try:
            lock = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _try_lock(lock):
                shutil.rmtree(path, ignore_errors=True)
                logging.info("removed the logit shards of an ended run: %s", path)
        finally:
            os.close(lock)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _try_lock(descriptor):
    """Takes an exclusive `flock`; False if another process holds it (True
    where the file system has no locks)."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        return error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN)
    return True


def _remove_locked(path, lock):
    shutil.rmtree(path, ignore_errors=True)
    os.close(lock)
