"""`tf.data` input pipelines and image augmentation.

Images stay uint8 all the way into the model (normalisation is part of the
model), so the pipelines only cache, shuffle with a seed, augment, batch and
prefetch.

tf.data's autotuning is off in every pipeline (`prefetched`): its background
thread can hold up the destruction of an iterator, which Keras does when `fit`
returns, for tens of seconds (measured with TF 2.21 on CPU: 17 to 40 s, at
random, after one run in three); these small pipelines do not need it.

Usage:

```python
train = pipelines.training_dataset(images, labels, 128, seed=0, augment=True)
val = pipelines.evaluation_dataset(val_images, val_labels, 1024)
```
"""

import math

import numpy as np
import tensorflow as tf

MAX_ROTATION_DEGREES = 10.0
MAX_SCALE_CHANGE = 0.1
MAX_SHIFT_FRACTION = 0.08
# Batches each pipeline prepares ahead of the training or evaluation step.
PREFETCH_BATCHES = 2


def augment_images(images, seed):
    """Random affine distortion of a batch: rotation up to 10 degrees, scale
    up to 10 %, shift up to 8 % of the image size, each drawn per image.

    Args:
        images: uint8 tensor `[batch, H, W, C]`.
        seed: int tensor of shape `[2]`; the same seed gives the same output.

    Returns:
        uint8 tensor of the same shape; the background is filled with 0.
    """
    images = tf.convert_to_tensor(images)
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    draws = tf.random.stateless_uniform([batch, 4], seed, -1.0, 1.0)
    angle = draws[:, 0] * (MAX_ROTATION_DEGREES * math.pi / 180.0)
    scale = 1.0 + MAX_SCALE_CHANGE * draws[:, 1]
    shift_x = draws[:, 2] * MAX_SHIFT_FRACTION * width
    shift_y = draws[:, 3] * MAX_SHIFT_FRACTION * height
    cos = tf.cos(angle) / scale
    sin = tf.sin(angle) / scale
    center_x, center_y = (width - 1) / 2.0, (height - 1) / 2.0
    # Inverse map from output to input pixel, as ImageProjectiveTransform takes it.
    offset_x = center_x - cos * center_x + sin * center_y - shift_x
    offset_y = center_y - sin * center_x - cos * center_y - shift_y
    zeros = tf.zeros_like(cos)
    transforms = tf.stack([cos, -sin, offset_x, sin, cos, offset_y, zeros, zeros], 1)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=transforms,
        output_shape=[height, width],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return tf.cast(tf.clip_by_value(tf.round(warped), 0.0, 255.0), tf.uint8)


def augmented_views(images, num_views, seed, batch_size=4096):
    """Fixed augmented copies of a data set, so that teacher logits on them can
    be computed once and cached.

    Args:
        images: uint8 array `[N, H, W, C]`.
        num_views: how many copies; view 0 is the original images.
        seed: int; the same seed gives the same views.
        batch_size: images distorted per call.

    Returns:
        uint8 array `[num_views * N, H, W, C]`, view after view.
    """
    views = [images]
    for view in range(1, num_views):
        views.extend(
            augment_images(
                images[start : start + batch_size],
                tf.constant([seed, view * len(images) + start], tf.int64),
            ).numpy()
            for start in range(0, len(images), batch_size)
        )
    return np.concatenate(views)


def training_examples(split, *, augment, augment_views, seed):
    """The images and labels a training stage trains on.

    Args:
        split: the training `data.Split`.
        augment: whether the images are distorted.
        augment_views: with `augment`, 0 draws distortions afresh every step;
            K > 0 appends K fixed views of the split (see `augmented_views`).
        seed: the views' seed.

    Returns:
        `(images, labels, random_augment)`: `random_augment` says whether the
        pipeline must draw distortions afresh.
    """
    if augment and augment_views > 0:
        images = augmented_views(split.images, augment_views, seed)
        return images, np.tile(split.labels, augment_views), False
    return split.images, split.labels, augment


def training_dataset(images, labels, batch_size, *, seed, teacher_logits=None, augment=False):
    """An endless, shuffled, batched training stream.

    Elements are `(images, labels)`, or `((images, teacher_logits), labels)`
    when `teacher_logits` is given (cached teacher logits travel in the same
    element as their images). Pass `steps_per_epoch` to `fit`.

    The stream is a function of `seed` alone: epoch e visits the examples in
    the order of a permutation drawn from `(seed, e)`, and batch b's
    distortions are drawn from `(seed, b)`. Every iterator over the dataset
    therefore yields the same batches (Keras opens an extra iterator under a
    `tf.distribute` strategy, and the workers of a cluster each open their
    own), and `skip(n)` continues exactly where batch n left off.

    Args:
        images: uint8 array `[N, H, W, C]`.
        labels: int array `[N]`.
        batch_size: global batch size.
        seed: shuffle and augmentation seed.
        teacher_logits: optional float32 array `[N, classes]`.
        augment: draw a fresh random distortion for every image at every step
            (not allowed with cached `teacher_logits`, which would no longer
            match their images).

    Returns:
        A `tf.data.Dataset`.
    """
    if augment and teacher_logits is not None:
        raise ValueError("random augmentation needs an online teacher, not cached logits")
    features = images if teacher_logits is None else (images, teacher_logits)
    examples = tf.nest.map_structure(tf.constant, (features, labels))
    num_examples = len(labels)

    def epoch_order(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num_examples, dtype=tf.int64),
            seed=tf.stack([tf.constant(seed, tf.int64), epoch]),
        )
        return tf.data.Dataset.from_tensor_slices(order)

    dataset = (
        tf.data.Dataset.counter()
        .flat_map(epoch_order)
        .batch(batch_size)
        .map(lambda indices: tf.nest.map_structure(lambda t: tf.gather(t, indices), examples))
    )
    if augment:
        steps = tf.data.Dataset.counter()
        dataset = tf.data.Dataset.zip((dataset, steps)).map(
            lambda batch, step: (
                augment_images(batch[0], tf.stack([tf.constant(seed, tf.int64), step])),
                batch[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    return prefetched(dataset)


def evaluation_dataset(images, labels, batch_size, *, teacher_logits=None):
    """A finite, ordered, batched stream for validation and test.

    Args:
        images: uint8 array `[N, H, W, C]`.
        labels: int array `[N]`.
        batch_size: examples per batch (evaluation can take large batches).
        teacher_logits: optional float32 array `[N, classes]`, as in
            `training_dataset`.

    Returns:
        A `tf.data.Dataset`.
    """
    features = images if teacher_logits is None else (images, teacher_logits)
    return prefetched(
        tf.data.Dataset.from_tensor_slices((features, labels)).batch(batch_size).cache()
    )


def prefetched(dataset):
    """`dataset` prefetching `PREFETCH_BATCHES` batches, with tf.data's
    autotuning off (see the module docstring); `AUTOTUNE` parallelism then
    means one call per CPU core."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(PREFETCH_BATCHES).with_options(options)


def steps_per_epoch(num_examples, batch_size):
    """Batches in one pass over `num_examples` (the last one may be short)."""
    return math.ceil(num_examples / batch_size)
