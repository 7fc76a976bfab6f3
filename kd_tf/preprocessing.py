"""One preprocessing, from an image file to the model's input, recorded in the export.

What training does to an image file (`kd_tf.data`), `predict` and the
export's `serving_images` signature do to theirs, with the same functions:

1. decode into RGB (`images.decode`): grey is repeated into three channels,
   a GIF's first frame kept, a transparent image composited onto the shade
   opposite to its drawing's, so that a black stroke on a transparent canvas
   stays visible;
2. resize to the model's H x W (`images.resized`: bilinear, antialiased,
   stretched as training's `--image_size` stretches; an image of that size
   is left as it is);
3. the model's channels: a 1-channel model takes a grey image's channel,
   and a colour image's luma (ITU-R 601); a 3-channel model takes RGB;
4. polarity, for drawing data sets only (grayscale, every training image
   on the recorded background, see `images.single_polarity`): an image whose
   frame is clearly of the other shade (`images.clear_shades`) is inverted
   (`255 - x`), which `predict` logs. Colour and photo data are never
   inverted.

The export records these parameters (`Preprocessing.as_json`, in
`report.json` under `preprocessing`), and `predict` reads them back
(`Preprocessing.from_report`).

Usage:

```python
recorded = preprocessing.Preprocessing.for_splits(splits)
image, inverted = preprocessing.prepare_file(tf.io.read_file("cat.png"), recorded)
```
"""

import dataclasses

import tensorflow as tf

from kd_tf.data import images as images_lib
from kd_tf.errors import UserError

# The methods this module implements, recorded so that a reader can tell.
RESIZE = "bilinear_antialias_stretch"
ALPHA = "composite_on_contrasting_shade"


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """The parameters of the preprocessing (see the module doc).

    Attributes:
        image_shape: the model's input `(H, W, C)`, C 1 or 3.
        background: the training images' background, `"dark"` or
            `"light"`, or None (unknown: a foreign model).
        invert: whether an image clearly of the other shade is inverted
            (a drawing data set's model).
    """

    image_shape: tuple
    background: str | None = None
    invert: bool = False

    @classmethod
    def for_splits(cls, splits):
        """The preprocessing of a model trained on `splits` (a `DataSplits`)."""
        train = splits.train
        drawings = splits.image_shape[-1] == 1 and train.single_polarity
        return cls(tuple(splits.image_shape), train.background, bool(drawings))

    def as_json(self):
        """The record the export keeps (`report.json`'s `preprocessing`)."""
        return {
            "image_size": list(self.image_shape[:2]),
            "channels": self.image_shape[-1],
            "resize": RESIZE,
            "alpha": ALPHA,
            "background": self.background,
            "invert_clearly_opposite": self.invert,
            "clear_margin": images_lib.CLEAR_MARGIN,
        }

    @classmethod
    def from_report(cls, report, image_shape):
        """The preprocessing a `report.json` records for a model taking
        `image_shape`; an older report's `data.background` (a grayscale
        model's images then inverted as drawings'), or none recorded.

        Raises:
            UserError: the record names a method this kd_tf does not have.
        """
        recorded = report.get("preprocessing")
        if recorded is None:
            background = report.get("data", {}).get("background")
            if background not in images_lib.BACKGROUNDS:
                return cls(tuple(image_shape))
            return cls(tuple(image_shape), background, image_shape[-1] == 1)
        if (recorded.get("resize"), recorded.get("alpha")) != (RESIZE, ALPHA):
            raise UserError(
                f"the export's preprocessing {recorded.get('resize')!r}, "
                f"{recorded.get('alpha')!r} is not this kd_tf's: predict with the kd_tf that "
                "made it"
            )
        return cls(tuple(image_shape), recorded["background"], recorded["invert_clearly_opposite"])


def takes_image_files(image_shape):
    """Whether a model of input `image_shape` `(H, W, C)` can be given image
    files: a fixed H x W, and 1 or 3 channels."""
    return len(image_shape) == 3 and None not in image_shape and image_shape[-1] in (1, 3)


def with_model_channels(image, channels):
    """An RGB image `[h, w, 3]` with `channels` channels (step 3)."""
    if channels == 3:
        return image
    grey = tf.reduce_all(tf.equal(image, image[..., :1]))
    return tf.cond(grey, lambda: image[..., :1], lambda: tf.image.rgb_to_grayscale(image))


def clearly_opposite(image, background):
    """Whether the frame of `image` (uint8 `[H, W, C]`) is clearly of the
    other shade than `background` (a boolean tensor)."""
    pixels = tf.cast(image, tf.float64)
    edges = (pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1])
    total = tf.add_n([tf.reduce_sum(edge) for edge in edges])
    count = tf.add_n([tf.cast(tf.size(edge), tf.float64) for edge in edges])
    light, dark = images_lib.clear_shades(total / count)
    return dark if background == "light" else light


def prepare(image, recorded):
    """A decoded RGB image (any size) as the model's input (steps 2 to 4).

    Args:
        image: uint8 `[h, w, 3]`, as `images.decode` gives it.
        recorded: a `Preprocessing`.

    Returns:
        `(input, inverted)`: uint8 `[H, W, C]` and a boolean tensor.
    """
    height, width, channels = recorded.image_shape
    image = with_model_channels(images_lib.resized(image, (height, width)), channels)
    if not recorded.invert:
        return image, tf.constant(False)
    inverted = clearly_opposite(image, recorded.background)
    return tf.cond(inverted, lambda: 255 - image, lambda: image), inverted


def prepare_file(encoded, recorded):
    """An image file's bytes (PNG, JPEG, BMP, GIF) as the model's input:
    `prepare(images.decode(encoded), recorded)`."""
    return prepare(images_lib.decode(encoded), recorded)
