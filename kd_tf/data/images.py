"""Decoding images (PNG, JPEG, BMP, GIF) and what is known of their pixels.

Shared by the sources that read image files, image bytes or TFDS images
(`directory`, `tfrecord`, `tfds`), and by `kd_tf.preprocessing`, which
applies the same steps to the files `predict` and `serving_images` take:
`decode` gives every image as RGB, a transparent one composited
(`composited`);
`resized` brings it to `--image_size` (bilinear, antialiased);
`image_facts` is what a scan (`kd_tf.data.scan`) learns of each image (its
size, whether it is in colour); `with_channels` then keeps one channel when
no image of the data set is in colour, else three.

`background` tells whether images are light on a dark background or dark on
a light one, from their outermost one-pixel frame: the training stages record
it in the report; `single_polarity` tells whether every image keeps to it
(none is clearly of the other polarity: `clear_shades`), which makes a
grayscale data set one of drawings, whose images `predict` may invert.

Usage:

```python
image = images.with_channels(images.resized(images.decode(png_bytes), (64, 64)), 3)
images.background(pixels)  # "dark" (e.g. MNIST) or "light"
```
"""

import numpy as np
import tensorflow as tf

from kd_tf.data import bmp
from kd_tf.errors import ConfigError


# The background's polarity, from the mean brightness of the images' frame.
BACKGROUNDS = ("dark", "light")
MID_GREY = 127.5
# An image's frame is clearly dark or light when its mean brightness is this
# far from mid-grey (below 95.5, above 159.5).
CLEAR_MARGIN = 32.0
# The colour channels of a decoded image of 1, 2 (grey and alpha), 3 or 4 channels.
_COLOUR_CHANNELS = ((0, 0, 0), (0, 0, 0), (0, 1, 2), (0, 1, 2))
# What reading and decoding an image file raises when the file is not a
# readable image: not an image, a dangling link, a directory, no permission.
UNREADABLE = (
    tf.errors.InvalidArgumentError,
    tf.errors.NotFoundError,
    tf.errors.FailedPreconditionError,
    tf.errors.PermissionDeniedError,
)


def decode(encoded):
    """One image's bytes as a uint8 RGB tensor `[h, w, 3]`: grey is repeated
    into the three channels, an alpha channel composited (`composited`), a
    GIF's first frame kept. A palette BMP (1 to 8 bits a pixel) is read by
    `kd_tf.data.bmp`: TensorFlow refuses or misreads it."""
    return tf.cond(
        bmp.is_palette_bmp(encoded),
        lambda: bmp.decode(encoded),
        lambda: composited(tf.io.decode_image(encoded, channels=0, expand_animations=False)),
    )


def composited(image):
    """A decoded uint8 image `[h, w, 1 to 4]` as RGB `[h, w, 3]`, its
    transparent pixels composited onto a backdrop of the shade opposite to
    its opaque pixels' (white behind dark ink, black behind light ink, by
    their alpha-weighted mean brightness), so that a drawing on a
    transparent canvas stays visible; an opaque image is returned as it is."""
    channels = tf.shape(image)[-1]
    colour = tf.gather(image, tf.gather(tf.constant(_COLOUR_CHANNELS), channels - 1), axis=-1)
    alpha = tf.cast(image[..., -1:], tf.float32) / 255.0
    transparent = tf.equal(channels % 2, 0) & tf.reduce_any(alpha < 1.0)

    def blended():
        pixels = tf.cast(colour, tf.float32)
        ink = tf.math.divide_no_nan(tf.reduce_sum(pixels * alpha), 3.0 * tf.reduce_sum(alpha))
        backdrop = tf.where(ink > MID_GREY, 0.0, 255.0)
        mixed = pixels * alpha + backdrop * (1.0 - alpha)
        return tf.cast(tf.round(tf.clip_by_value(mixed, 0.0, 255.0)), tf.uint8)

    return tf.cond(transparent, blended, lambda: colour)


def as_rgb(image):
    """A uint8 image `[h, w, 1 or 3]` (a TFDS data set's) as `[h, w, 3]`."""
    image = tf.convert_to_tensor(image)
    if image.shape[-1] == 3:
        return image
    return tf.tile(image, [1, 1, 3])


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


def frame_means(images):
    """The mean brightness of each image's frame (as `frame_mean` takes it),
    float64 `[N]` of uint8 images `[N, H, W, C]`."""
    images = np.asarray(images)
    edges = (images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1])
    total = sum(np.sum(edge, axis=(1, 2), dtype=np.float64) for edge in edges)
    return total / sum(edge[0].size for edge in edges)


def clear_shades(mean):
    """`(clearly light, clearly dark)` of frame mean brightnesses (numbers,
    arrays or tensors): `CLEAR_MARGIN` or more above or below mid-grey."""
    return mean > MID_GREY + CLEAR_MARGIN, mean < MID_GREY - CLEAR_MARGIN


def single_polarity(images, background_of_images):
    """Whether no image of `images` (uint8 `[N, H, W, C]`) has a frame
    clearly of the other shade than `background_of_images`."""
    light, dark = clear_shades(frame_means(images))
    return not np.any(dark if background_of_images == "light" else light)


def background(images):
    """`"light"` when the frame of `images` (one or all, as `frame_mean`
    takes them) is brighter than mid-grey (127.5) on average, else `"dark"`.

    Usage: `background(splits.train.images)` is `"dark"` for MNIST.
    """
    return "light" if frame_mean(images) > MID_GREY else "dark"


def resized(image, image_size):
    """`image` resized to `image_size` `(H, W)` (bilinear, antialiased), uint8."""
    scaled = tf.image.resize(image, image_size, antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(scaled, 0.0, 255.0)), tf.uint8)


def with_channels(image, channels):
    """An RGB image `[..., 3]` (as `decode` gives it) with `channels` channels:
    a grey data set (every image's channels equal, see `image_facts`) keeps
    the first."""
    return image if channels == 3 else image[..., :1]


def image_facts(image):
    """What a scan of the data set needs of one RGB image: its height and
    width, whether it is in colour (channels that differ somewhere), and the
    sum and pixel count of its outermost frame (as `frame_mean` counts it)."""
    pixels = tf.cast(image, tf.float64)
    edges = (pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1])
    return {
        "size": tf.shape(image, out_type=tf.int64)[:2],
        "colour": tf.reduce_any(image[..., 0] != image[..., 1])
        | tf.reduce_any(image[..., 1] != image[..., 2]),
        "frame_sum": tf.add_n([tf.reduce_sum(edge) for edge in edges]) / 3.0,
        "frame_count": tf.add_n([tf.size(edge[..., 0], out_type=tf.int64) for edge in edges]),
    }
