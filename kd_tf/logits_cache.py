"""The teacher's logits computed once, kept in memory or streamed from disk.

In the student stage's `cached` mode the teacher runs once over each split.
Logits that fit in `--logits_memory_mb` stay in memory and travel in the same
`tf.data` element as their images (`kd_tf.pipelines`). Larger ones (or all, with
`--logits_cache=disk`) are written batch by batch, together with their images
and labels, into TFRecord shards and read back by a streaming pipeline: neither
the logits nor a second copy of the images is ever held in memory whole.

Usage:

```python
if logits_cache.resolve_cache("auto", len(images), teacher.num_classes, 2048) == "disk":
    shards = logits_cache.write_shards(teacher, images, labels, "/tmp/logits/train")
    train = logits_cache.training_stream(shards, 128, seed=0, image_shape=(28, 28, 1),
                                         num_classes=10)
```
"""

import os

import tensorflow as tf

from kd_tf import pipelines

LOGITS_CACHES = ("auto", "memory", "disk")
# Examples per TFRecord shard, and the shuffle buffer of the streaming pipeline.
EXAMPLES_PER_SHARD = 16384
SHUFFLE_BUFFER = 16384
# Shards read at once while training.
INTERLEAVE_SHARDS = 4

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
    read from the shards. Every pass over the data (epoch) reshuffles the shard
    order, reads up to `INTERLEAVE_SHARDS` shards at once and shuffles the
    examples in a `SHUFFLE_BUFFER` buffer; each example is seen once per pass.

    Args:
        shards: paths from `write_shards`.
        batch_size: global batch size.
        seed: shuffle seed.
        image_shape: `(H, W, C)`.
        num_classes: logits per example.

    Returns:
        A `tf.data.Dataset`, elements as `pipelines.training_dataset`'s.
    """
    records = (
        tf.data.Dataset.from_tensor_slices(shards)
        .shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)
        .interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(INTERLEAVE_SHARDS, len(shards)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    )
    return pipelines.prefetched(
        _examples(records, image_shape, num_classes)
        .shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(batch_size)
    )


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
