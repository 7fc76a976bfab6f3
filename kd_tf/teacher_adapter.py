"""A teacher from anywhere, seen as distillation needs it: the data set's uint8
images in, float32 logits out.

A published teacher rarely takes kd_tf's uint8 images of the data set's shape
and returns logits. `TeacherAdapter` bridges the differences, with TensorFlow
ops (so it runs eagerly, in the cached pass, and inside a training step):

- **size**: images are resized (bilinear, antialiased) to the teacher's H x W
  when it was trained at another resolution;
- **channels**: grayscale images are repeated into RGB for a 3-channel teacher,
  colour images turned to luma for a 1-channel one; other channel counts are
  refused (`check_input`);
- **pixels**: a teacher taking float images gets them in its pixel range
  (`PIXEL_RANGES`: `0-255`, `0-1` or `-1-1`, from `--teacher_pixel_range`, or
  picked from the data by `kd_tf.teacher_check`);
- **class order**: a teacher whose outputs are in another order than the data
  set's classes has them reordered (`class_order`, `--teacher_class_order`);
- **outputs**: a teacher whose `logits` output is really a probability vector
  gets its log taken (`--teacher_output=probabilities`); with `auto`, a probe
  batch decides, and the decision is logged with its evidence: every value in
  [0, 1] and every row summing to 1 (within `PROBABILITY_TOLERANCE`, which
  allows for a softmax rounded to 16 bits) means probabilities; anything else,
  log-probabilities included, is read as logits.
  softmax(log(p) / T) is softmax(z / T) for the teacher's true logits z, so the
  distillation loss is the one the true logits give.

Usage:

```python
teacher_adapter.check_input(model, splits.image_shape)
adapter = teacher_adapter.TeacherAdapter(model, splits.image_shape, "0-1", "auto")
adapter.resolve_output(splits.validation.head(256))
logits = adapter.predict_logits(splits.train.head(1000))
```
"""

import numpy as np
import tensorflow as tf
from absl import logging

from kd_tf import choices
from kd_tf.errors import ConfigError
from kd_tf.export.contract import batched_outputs

PIXEL_RANGES = choices.PIXEL_RANGES
TEACHER_PIXEL_RANGES = choices.TEACHER_PIXEL_RANGES
TEACHER_OUTPUTS = choices.TEACHER_OUTPUTS
# `auto` reads the outputs as probabilities when every row of the probe batch
# lies in [0, 1] and sums to 1 within this tolerance. bfloat16 keeps 8
# significant bits, so every rounding moves a value near 1 by up to 2^-9; a
# softmax computed in bfloat16 rounds its exponentials, their sum and each
# quotient (measured: a Dense(3, softmax) under mixed_bfloat16 sums to 1 only
# within 0.006, about 3 * 2^-9). 2^-6 leaves a margin of 2.6 above that; a
# float32 softmax sums to 1 within 1e-6, and logits are rarely all in [0, 1].
PROBABILITY_TOLERANCE = 2.0**-6
PROBE_EXAMPLES = 256


def check_input(model, data_shape):
    """Refuses a teacher whose input the data set's images cannot be converted
    to; logs the conversions it will make.

    Args:
        model: the teacher's `export.ServingModel`.
        data_shape: `(H, W, C)` of the data set's images.

    Raises:
        ConfigError: the channels differ and are not 1 and 3 (`--teacher_dir`).
    """
    height, width, channels = model.image_shape
    data_height, data_width, data_channels = data_shape
    if channels not in (None, data_channels) and {channels, data_channels} != {1, 3}:
        raise ConfigError(
            ("teacher_dir",),
            f"teacher {model.path} takes images of {channels} channels but the data set's have "
            f"{data_channels}: pass a teacher taking 1 or 3 channels as {{0}}",
        )
    if channels not in (None, data_channels):
        logging.info("teacher %s takes %d channels: images are converted from %d", model.path,
                     channels, data_channels)
    if (height, width) != (data_height, data_width) and None not in (height, width):
        logging.info(
            "teacher %s was trained at %dx%d: images are resized from %dx%d on the fly",
            model.path, height, width, data_height, data_width,
        )


def looks_like_probabilities(outputs):
    """Whether every row of `outputs` lies in [0, 1] and sums to 1 (within
    `PROBABILITY_TOLERANCE`)."""
    outputs = np.asarray(outputs, np.float64)
    return bool(
        np.all(outputs >= 0.0)
        and np.all(outputs <= 1.0)
        and np.all(np.abs(outputs.sum(axis=-1) - 1.0) <= PROBABILITY_TOLERANCE)
    )


def describe_outputs(outputs):
    """The evidence `looks_like_probabilities` decides on, in words: the range
    of the values and of the row sums of `outputs`."""
    outputs = np.asarray(outputs, np.float64)
    sums = outputs.sum(axis=-1)
    return (
        f"values in [{outputs.min():.4g}, {outputs.max():.4g}], rows summing to "
        f"{sums.min():.4g} to {sums.max():.4g}"
    )


class TeacherAdapter:
    """The teacher as distillation sees it (see the module doc).

    Args:
        model: the teacher's `export.ServingModel`.
        data_shape: `(H, W, C)` of the data set's images.
        pixel_range: one of `TEACHER_PIXEL_RANGES`, for a teacher taking float
            images; "auto" until the teacher check sets it.
        output: one of `TEACHER_OUTPUTS`; "auto" until `resolve_output`.
        class_order: None, or for each of the data set's classes the index of
            the teacher's output that predicts it (a permutation).
    """

    def __init__(self, model, data_shape, pixel_range="0-255", output="logits", class_order=None):
        if pixel_range not in TEACHER_PIXEL_RANGES:
            raise ValueError(
                f"pixel_range must be one of {TEACHER_PIXEL_RANGES}, got {pixel_range!r}"
            )
        if output not in TEACHER_OUTPUTS:
            raise ValueError(f"output must be one of {TEACHER_OUTPUTS}, got {output!r}")
        self.model = model
        self.data_shape = tuple(data_shape)
        self.pixel_range = pixel_range
        self.output = output
        self.class_order = None if class_order is None else tuple(class_order)

    @property
    def takes_float(self):
        """Whether the teacher takes float images (so a pixel range applies)."""
        return self.model.input_dtype != tf.uint8

    def resolve_output(self, probe_images):
        """Decides `auto` on `probe_images` (uint8, the data set's shape) and
        logs the decision with its evidence."""
        if self.output != "auto":
            return self.output
        raw = self.model.logits(self.images(probe_images[:PROBE_EXAMPLES])).numpy()
        self.output = "probabilities" if looks_like_probabilities(raw) else "logits"
        evidence = f"on {len(raw)} images, {describe_outputs(raw)}"
        if self.output == "probabilities":
            logging.info(
                "teacher %s: its 'logits' output holds probabilities (%s: within %.4g of 1, as "
                "16-bit rounding allows), so distillation takes their log "
                "(--teacher_output=logits to keep them)",
                self.model.path, evidence, PROBABILITY_TOLERANCE,
            )
        elif raw.min() >= 0.0 and raw.max() <= 1.0:
            logging.warning(
                "teacher %s: its 'logits' output lies in [0, 1] but is read as logits, its rows "
                "do not sum to 1 (%s): pass --teacher_output=probabilities if they are "
                "probabilities of each class (sigmoid outputs)", self.model.path, evidence,
            )
        else:
            logging.info("teacher %s: its 'logits' output is read as logits (%s)",
                         self.model.path, evidence)
        return self.output

    def images(self, images):
        """The data set's uint8 `images` as the teacher takes them."""
        images = tf.convert_to_tensor(images)
        height, width, channels = self.model.image_shape
        if channels not in (None, images.shape[-1]):
            images = (
                tf.image.grayscale_to_rgb(images)
                if channels == 3
                else tf.image.rgb_to_grayscale(images)
            )
        if None not in (height, width) and (height, width) != tuple(images.shape[1:3]):
            resized = tf.image.resize(images, (height, width), antialias=True)
            images = tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)
        if not self.takes_float:
            return images
        if self.pixel_range == "auto":
            raise RuntimeError("set pixel_range (the teacher check picks it) before feeding images")
        low, high = PIXEL_RANGES[self.pixel_range]
        scaled = tf.cast(images, tf.float32) * ((high - low) / 255.0) + low
        return tf.cast(scaled, self.model.input_dtype)

    def logits(self, images):
        """float32 logits of the data set's uint8 `images`."""
        return self.as_logits(self.model.logits(self.images(images)))

    def as_logits(self, outputs):
        """The teacher's float `outputs` (what its `logits` output holds) as
        float32 logits of the data set's classes."""
        if self.output == "auto":
            raise RuntimeError("call resolve_output before asking for logits")
        outputs = tf.cast(outputs, tf.float32)
        if self.class_order is not None:
            outputs = tf.gather(outputs, self.class_order, axis=-1)
        if self.output == "probabilities":
            return tf.math.log(tf.maximum(outputs, np.finfo(np.float32).tiny))
        return outputs

    def predict_logits(self, images, batch_size=1024):
        """`logits` of a uint8 array, batch by batch, as numpy."""
        if not len(images):
            return np.zeros((0, self.model.num_classes), np.float32)
        return batched_outputs(self.logits, np.asarray(images), batch_size)
