"""Decoding encoded images (PNG, JPEG, BMP, GIF) into one uint8 array.

Shared by the sources that read image files or image bytes (`directory`,
`tfrecord`). `decode_images` decodes in parallel with `tf.data`; all images
must share one size unless `image_size=(H, W)` is given, which resizes them
(bilinear, antialiased); if any image is in colour, all become RGB (an alpha
channel is dropped), else they stay grayscale.

`background` tells whether images are light on a dark background or dark on
a light one, from their outermost one-pixel frame: the training stages record
it in the report, `predict` compares an image file's with its model's.

Usage:

```python
encoded = tf.data.Dataset.from_tensor_slices(paths).map(tf.io.read_file)
pixels = images.decode_images(encoded, (64, 64), on_error=lambda: UserError("..."))
images.background(pixels)  # "dark" (e.g. MNIST) or "light"
```
"""

import numpy as np
import tensorflow as tf

from kd_tf.errors import ConfigError

# The background's polarity, from the mean brightness of the images' frame.
BACKGROUNDS = ("dark", "light")
MID_GREY = 127.5
# What reading and decoding an image file raises when the file is not a
# readable image: not an image, a dangling link, a directory, no permission.
UNREADABLE = (
    tf.errors.InvalidArgumentError,
    tf.errors.NotFoundError,
    tf.errors.FailedPreconditionError,
    tf.errors.PermissionDeniedError,
)


def decode(encoded):
    """One image's bytes as a uint8 tensor `[h, w, channels]` (its own channels)."""
    return tf.io.decode_image(encoded, expand_animations=False)


def decode_images(encoded, image_size, on_error):
    """uint8 array `[N, H, W, C]` of the images whose bytes `encoded` yields.

    Args:
        encoded: a `tf.data.Dataset` of encoded images (scalar strings).
        image_size: `(H, W)` to resize every image to, or None.
        on_error: callable returning the exception to raise when an image does
            not decode (e.g. naming its file).

    Raises:
        ConfigError: the images differ in size and `image_size` is None.
    """
    dataset = encoded.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if image_size is not None:
        dataset = dataset.map(lambda image: _resized(image, image_size))
    try:
        images = list(dataset.as_numpy_iterator())
    except UNREADABLE:
        raise on_error() from None
    sizes = {image.shape[:2] for image in images}
    if len(sizes) > 1:
        raise mixed_sizes(sizes)
    colour = any(image.shape[-1] >= 3 and not _is_grey(image) for image in images)
    return np.stack([_with_channels(image, 3 if colour else 1) for image in images])


def mixed_sizes(sizes):
    """The error for images of several `(H, W)` `sizes` without `image_size`."""
    sizes = sorted(sizes)
    return ConfigError(
        ("image_size",),
        f"the images have {len(sizes)} sizes (e.g. {sizes[0][0]}x{sizes[0][1]} and "
        f"{sizes[-1][0]}x{sizes[-1][1]}): pass {{0}}=H,W to resize them all",
    )


def frame_mean(images):
    """Mean brightness of the outermost one-pixel frame (its four edges, the
    corners counted twice) of one image `[H, W, C]` or of all images
    `[N, H, W, C]` (array or eager tensor, any numeric dtype)."""
    images = np.asarray(images)
    edges = (
        images[..., 0, :, :],
        images[..., -1, :, :],
        images[..., :, 0, :],
        images[..., :, -1, :],
    )
    total = sum(float(np.sum(edge, dtype=np.float64)) for edge in edges)
    return total / sum(edge.size for edge in edges)


def background(images):
    """`"light"` when the frame of `images` (one or all, as `frame_mean`
    takes them) is brighter than mid-grey (127.5) on average, else `"dark"`.

    Usage: `background(splits.train.images)` is `"dark"` for MNIST.
    """
    return "light" if frame_mean(images) > MID_GREY else "dark"


def _is_grey(image):
    return bool(np.all(image[..., 0] == image[..., 1]) and np.all(image[..., 1] == image[..., 2]))


def _with_channels(image, channels):
    """An image of 1 to 4 channels as `channels` (1 or 3); alpha dropped."""
    if image.shape[-1] in (2, 4):
        image = image[..., :-1]
    if image.shape[-1] == channels:
        return image
    return np.repeat(image, 3, axis=-1) if channels == 3 else image[..., :1]


def _resized(image, image_size):
    resized = tf.image.resize(image, image_size, antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)
