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
train = pipelines.training_dataset(splits.train, 128, seed=0, augment=True)
val = pipelines.evaluation_dataset(splits.validation, 1024)
```
"""

import math

import tensorflow as tf

MAX_ROTATION_DEGREES = 10.0
MAX_SCALE_CHANGE = 0.1
MAX_SHIFT_FRACTION = 0.08
# Batches each pipeline prepares ahead of the training or evaluation step.
PREFETCH_BATCHES = 2
# A fixed view's draws: the top bits of a 64-bit hash, exact in float32.
DRAW_BITS = 24
_SPLITMIX_INCREMENT = 0x9E3779B97F4A7C15
_SPLITMIX_ROUNDS = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB))
# Folded into a step's seed for its mixup ratio, apart from its distortions'.
_MIXUP_STREAM = 1


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
    return distort(images, tf.random.stateless_uniform([tf.shape(images)[0], 4], seed, -1.0, 1.0))


def distort(images, draws):
    """The affine distortion of each image of a batch that its draws give.

    Bilinear, as `ImageProjectiveTransformV3` warps (`inverse_maps` gives
    each image's map from output pixel to input position; the four input
    pixels around that position are weighted by distance, those outside
    the image read as 0), but written as gathers that XLA compiles into one
    loop (`_warped`): on a 2-core AVX-512 EPYC a 28x28 image costs 3.7
    core-microseconds against the op's 9, whose per-pixel index arithmetic
    dominates even with nearest-neighbour sampling. The two agree but for
    about 1 pixel in 100,000, by 1, where the float rounding falls
    differently at a .5.

    Args:
        images: uint8 tensor `[batch, H, W, C]`.
        draws: float32 `[batch, 4]` in [-1, 1]: rotation, scale, shift x and
            shift y, as shares of their largest change; zeros leave an image
            unchanged.

    Returns:
        uint8 tensor of the same shape; the background is filled with 0.
    """
    return _warped(tf.convert_to_tensor(images), tf.convert_to_tensor(draws, tf.float32))


def inverse_maps(draws, height, width):
    """The affine map of each draw from output pixel `(x, y)` to input
    position, as `ImageProjectiveTransformV3`'s first six transform entries:
    float32 `[batch, 6]` rows `(a0, a1, a2, b0, b1, b2)`, input x =
    a0 x + a1 y + a2, input y = b0 x + b1 y + b2 (a rotation and scale about
    the image's centre, then the shift)."""
    angle = draws[:, 0] * (MAX_ROTATION_DEGREES * math.pi / 180.0)
    scale = 1.0 + MAX_SCALE_CHANGE * draws[:, 1]
    shift_x = draws[:, 2] * MAX_SHIFT_FRACTION * width
    shift_y = draws[:, 3] * MAX_SHIFT_FRACTION * height
    cos = tf.cos(angle) / scale
    sin = tf.sin(angle) / scale
    center_x, center_y = (width - 1) / 2.0, (height - 1) / 2.0
    offset_x = center_x - cos * center_x + sin * center_y - shift_x
    offset_y = center_y - sin * center_x - cos * center_y - shift_y
    return tf.stack([cos, -sin, offset_x, sin, cos, offset_y], 1)


@tf.function(jit_compile=True)
def _warped(images, draws):
    """`distort`'s warp, compiled by XLA (a function of static H, W, C)."""
    height, width, channels = images.shape[1:]
    maps = [row[:, None, None] for row in tf.unstack(inverse_maps(draws, height, width), axis=1)]
    columns = tf.range(width, dtype=tf.float32)
    rows = tf.range(height, dtype=tf.float32)[:, None]
    source_x = maps[0] * columns + maps[1] * rows + maps[2]
    source_y = maps[3] * columns + maps[4] * rows + maps[5]
    pixels = tf.reshape(tf.cast(images, tf.float32), [-1, channels])
    first_pixels = (tf.range(tf.shape(images)[0]) * (height * width))[:, None, None]

    def read(y, x):
        row, column = tf.cast(y, tf.int32), tf.cast(x, tf.int32)
        inside = (row >= 0) & (row < height) & (column >= 0) & (column < width)
        at = first_pixels + tf.clip_by_value(row, 0, height - 1) * width
        at += tf.clip_by_value(column, 0, width - 1)
        return tf.where(inside[..., None], tf.gather(pixels, at), 0.0)

    left, top = tf.floor(source_x), tf.floor(source_y)
    right, bottom = left + 1.0, top + 1.0
    to_left, to_right = (right - source_x)[..., None], (source_x - left)[..., None]
    upper = to_left * read(top, left) + to_right * read(top, right)
    lower = to_left * read(bottom, left) + to_right * read(bottom, right)
    warped = (bottom - source_y)[..., None] * upper + (source_y - top)[..., None] * lower
    return as_pixels(warped)


def as_pixels(values):
    """float32 pixel values as uint8 images: rounded, then clipped to [0, 255]."""
    return tf.cast(tf.clip_by_value(tf.round(values), 0.0, 255.0), tf.uint8)


def mixup(images, labels, num_classes, alpha, seed):
    """Blends a batch with itself shifted by one (example b with b - 1), by
    one ratio lam ~ Beta(alpha, alpha) for the batch, as big_vision's
    distillation does.

    Args:
        images: uint8 tensor `[batch, H, W, C]`.
        labels: int tensor `[batch]`.
        num_classes: classes of the labels.
        alpha: the Beta distribution's parameter, > 0.
        seed: int tensor of shape `[2]`; the same seed gives the same output.

    Returns:
        `(images, labels)`: the blended uint8 images (rounded) and float32
        label distributions `[batch, num_classes]`, lam on each example's
        class and 1 - lam on its partner's.
    """
    draws = tf.random.stateless_gamma([2], seed, alpha)
    ratio = draws[0] / (draws[0] + draws[1])
    pixels = tf.cast(images, tf.float32)
    blended = ratio * pixels + (1.0 - ratio) * tf.roll(pixels, 1, axis=0)
    one_hot = tf.one_hot(labels, num_classes)
    return (
        as_pixels(blended),
        ratio * one_hot + (1.0 - ratio) * tf.roll(one_hot, 1, axis=0),
    )


def view_draws(seed, views, indices):
    """The draws (as `distort` takes them, `[batch, 4]`) of view `views[b]` of
    example `indices[b]`: a function of `(seed, view, index)` alone, so the
    teacher's cached logits and every training pass see the same view; view 0
    is the image itself (zero draws).

    Vectorised over the batch: each draw is a counter-based hash
    (`_hashed`) of `(seed, view, index, draw)` in integer ops, the same on
    every CPU, its top 24 bits read as a uniform number in [-1, 1).
    """
    key = _hashed(_hashed(_hashed(_as_uint64(seed)) + _as_uint64(views)) + _as_uint64(indices))
    bits = tf.bitwise.right_shift(
        _hashed(key[:, None] + _as_uint64(tf.range(1, 5, dtype=tf.int64))),
        tf.constant(64 - DRAW_BITS, tf.uint64),
    )
    draws = tf.cast(bits, tf.float32) * (2.0 / 2**DRAW_BITS) - 1.0
    return tf.where((views > 0)[:, None], draws, tf.zeros_like(draws))


def _as_uint64(values):
    return tf.bitcast(tf.cast(values, tf.int64), tf.uint64)


def _hashed(values):
    """splitmix64 of uint64 `values` (Steele, Lea and Flood 2014): the
    golden-ratio increment, then a finaliser whose every output bit depends
    on every input bit, element by element (uint64 arithmetic wraps)."""
    z = values + tf.constant(_SPLITMIX_INCREMENT, tf.uint64)
    for shift, multiplier in _SPLITMIX_ROUNDS:
        z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(shift, tf.uint64)))
        z = z * tf.constant(multiplier, tf.uint64)
    return tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(31, tf.uint64)))


def view_of(index, num_views, pass_number):
    """The view a training pass shows of an example: `(pass + index) mod K`,
    so K passes show each example in each of its K views once (0 without views)."""
    if not num_views:
        return tf.zeros_like(index)
    return (pass_number + index) % num_views


def views_in_order(split, num_views, seed, batch_size):
    """Views 0 to `num_views - 1` of every example of `split`, view after
    view, each in index order, as batches of `(views, indices, images)`
    (what the teacher's cached logits are computed on; a batch holds one
    view). The views are drawn in parallel on tf.data's threads and
    prefetched, so a consumer running the teacher on one batch overlaps the
    drawing of the next ones.

    Usage:

    ```python
    for views, indices, images in views_in_order(split, 4, seed=0, batch_size=1024):
        logits = teacher(images)
    ```
    """
    batches_per_view = steps_per_epoch(len(split), batch_size)

    def viewed(step, batch):
        indices, images = batch
        views = tf.fill(tf.shape(indices), step // batches_per_view)
        if num_views > 1:  # else only view 0, the images as they are: nothing to trace
            images = tf.cond(
                views[0] > 0,
                lambda: distort(images, view_draws(seed, views, indices)),
                lambda: images,
            )
        return views, indices, images

    dataset = split.batched_in_order(batch_size).repeat(max(1, num_views)).enumerate()
    return prefetched(dataset.map(viewed, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))


def augmentation(augment, augment_views):
    """`(views, random_augment)` of `--augment` and `--augment_views`: K fixed
    views with both, distortions drawn afresh every step with `--augment`
    alone, neither without it."""
    views = augment_views if augment else 0
    return views, augment and not views


def training_dataset(
    split, batch_size, *, seed, views=0, logits=None, augment=False, mixup_alpha=0.0,
    num_classes=None,
):
    """An endless, shuffled, batched training stream.

    Elements are `(images, labels)`, or `((images, teacher_logits), labels)`
    with cached `logits` (joined to their images by index and view). Pass
    `steps_per_epoch` to `fit`.

    The stream is a function of `seed` alone: pass p visits the examples in
    the order `split.passes` draws from `(seed, p)`, showing example
    i as view `view_of(i, K, p)`; with `augment`, batch b's distortions are
    drawn from `(seed, b)`, and so is its mixup ratio. Every iterator yields the same batches (Keras's
    extra one under a strategy, each worker's), and `skip(n)` continues
    exactly where batch n left off.

    Args:
        split: a `data.Split` or `data.StreamedSplit`.
        batch_size: global batch size.
        seed: shuffle, view and augmentation seed.
        views: K > 0 trains on K fixed augmented views of each example.
        logits: a `logits_cache.LogitsTable` of the teacher's logits of
            every view, or None.
        augment: draw a fresh random distortion for every image at every step
            (not allowed with cached `logits`, which would no longer match
            their images).
        mixup_alpha: > 0 blends each batch (`mixup`, after the
            distortions; not with cached `logits` either): the labels are
            then distributions over `num_classes`.
        num_classes: the labels' classes, for mixup.

    Returns:
        A `tf.data.Dataset`.
    """
    if (augment or mixup_alpha) and logits is not None:
        raise ValueError("random augmentation and mixup need an online teacher, not cached logits")
    labels = tf.constant(split.labels)

    def batch(passes, indices, images):
        shown = view_of(indices, views, passes)
        if views:
            images = distort(images, view_draws(seed, shown, indices))
        return _joined(indices, shown, images, labels, logits)

    dataset = split.batched_passes(seed, batch_size).map(
        batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    if augment:
        dataset = _per_step(dataset, seed, lambda images, labels, key: (augment_images(images, key), labels))
    if mixup_alpha:
        dataset = _per_step(
            dataset,
            seed,
            lambda images, labels, key: mixup(
                images, labels, num_classes, mixup_alpha,
                tf.random.experimental.stateless_fold_in(key, _MIXUP_STREAM),
            ),
        )
    return prefetched(dataset)


def _per_step(dataset, seed, transform):
    """`dataset` with `transform(images, labels, key)` applied to batch b,
    `key` the random seed `(seed, b)`."""
    steps = tf.data.Dataset.counter()
    return tf.data.Dataset.zip((dataset, steps)).map(
        lambda batch, step: transform(*batch, tf.stack([tf.constant(seed, tf.int64), step])),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _joined(indices, view, images, labels, logits):
    features = images if logits is None else (images, logits.lookup(indices, view))
    return features, tf.gather(labels, indices)


def evaluation_dataset(split, batch_size, *, logits=None):
    """A finite, ordered, batched stream for validation and test.

    Args:
        split: a `data.Split` or `data.StreamedSplit`.
        batch_size: examples per batch (evaluation can take large batches).
        logits: optional `logits_cache.LogitsTable` of the split's images
            (view 0), as in `training_dataset`.

    Returns:
        A `tf.data.Dataset` (cached when the split is in memory).
    """
    labels = tf.constant(split.labels)
    dataset = split.batched_in_order(batch_size).map(
        lambda indices, images: _joined(
            indices, tf.zeros_like(indices), images, labels, logits
        )
    )
    return prefetched(dataset.cache() if split.in_memory else dataset)


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
