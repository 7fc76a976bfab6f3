"""One pass over a file-based source's splits before training: what they hold.

`scan_split` reads every image of a split once, in order, with `tf.data`,
and keeps only what the run needs to know: the labels, the image sizes,
whether any image is in colour, the background's polarity, and the records
of each file. While the decoded images fit the memory budget
(`--data_memory_mb`) it keeps them too, so that a small data set is read
once and then trained on from memory; past the budget it drops them, and the
split is streamed from its files (`kd_tf.data.streaming`). A split whose
files alone take more than the budget keeps none from the start. An image that does
not decode stops the scan with the source's error.

Without `--image_size` every image must have the size of the first; an image
whose header (`images.header_size`) gives another size is not decoded (an
8000x8000 PNG of 62 KB decodes to 192 MB): it is counted by that size, and
the data set refused for its sizes.

`assemble` then gives both splits one image shape and their channels.

Usage:

```python
scans = [scan_split(examples, reader.decode, None, budget, on_error) for ...]
train, test = assemble(scans, readers, image_size=None)
```
"""

import dataclasses
import functools
import os

import numpy as np
import tensorflow as tf

from kd_tf import choices, progress
from kd_tf.data import images as images_lib
from kd_tf.data.splits import Split
from kd_tf.data.streaming import StreamedSplit
from kd_tf.errors import ConfigError

MEBIBYTE = 2**20
# The largest split, decoded, held in memory (MiB); larger ones are streamed.
DEFAULT_MEMORY_MB = choices.DEFAULT_MEMORY_MB
# Examples the scan hands to Python at once: one at a time, iterating took
# about 1 ms an image on the 2-core AVX2 EPYC, more than decoding a small PNG.
# Fewer when the images it keeps are large: a batch holds at most
# SCAN_BATCH_BYTES of decoded pixels, or one image.
SCAN_BATCH = 64
SCAN_BATCH_BYTES = 16 * MEBIBYTE
# Without tf.data's default graph rewrites and autotuning, the scan's pipeline
# starts faster and runs as fast (on the 2-core AVX2 EPYC, 20 PNGs: about
# 25 % less time a load; 12,000 PNGs: 5.2 to 5.8 s a load instead of 6.3 to 7.0 s).
_SCAN_OPTIONS = tf.data.Options()
_SCAN_OPTIONS.experimental_optimization.apply_default_optimizations = False
_SCAN_OPTIONS.autotune.enabled = False


@dataclasses.dataclass
class SplitScan:
    """What `scan_split` found in one split (see the module doc)."""

    labels: list = dataclasses.field(default_factory=list)
    parts: list = dataclasses.field(default_factory=list)
    sizes: set = dataclasses.field(default_factory=set)
    colour: bool = False
    frame_sum: float = 0.0
    frame_count: int = 0
    # Images whose frame is clearly light, clearly dark (`images.clear_shades`).
    clearly_light: int = 0
    clearly_dark: int = 0
    images: list | None = dataclasses.field(default_factory=list)
    bytes: int = 0

    def counts(self, parts):
        """Examples in each of `parts` parts (files)."""
        return np.bincount(np.asarray(self.parts, np.int64), minlength=parts).tolist()


def stored_bytes(paths):
    """The size of the files `paths` on disk; one that cannot be read counts
    0 (the scan then names it)."""
    total = 0
    for path in paths:
        try:
            total += os.path.getsize(path)
        except OSError:
            pass
    return total


def scan_split(
    examples, decode, image_size, memory_mb, on_error, stored_bytes=None, what="scanning",
    total=None,
):
    """Scans one split.

    Args:
        examples: a `tf.data.Dataset` of `(raw, label, part)`: a reader's raw
            image, its label and the number of the file it is in.
        decode: raw -> uint8 RGB image (the reader's `decode`).
        image_size: `(H, W)` to resize to, or None.
        memory_mb: the most decoded images (MiB) kept.
        on_error: (the error) -> the exception to raise when an image or a
            file cannot be read (`images.UNREADABLE`, or a corrupt file's
            `DataLossError`).
        stored_bytes: the size of the split's files, when known. Decoded
            images take at least as much as their PNG or JPEG files, so a
            split stored in more than `memory_mb` is not kept at all: the
            scan's memory stays that of a few images.
        what, total: what the scan reads and how many images, when known,
            for its `progress.Progress`.

    Returns:
        A `SplitScan`; its `images` is None when they did not fit.
    """

    keep = stored_bytes is None or stored_bytes <= memory_mb * MEBIBYTE
    found = SplitScan(images=[] if keep else None)
    try:
        expected = None if image_size is not None else _first_size(examples)
        size_key = None if image_size is None else tuple(image_size)
        scanned = _scan_function(decode, size_key, keep, expected is not None)
        header = tf.constant(expected or (-1, -1), tf.int64)
        mapped = examples.map(
            lambda raw, label, part: _flat(*scanned(raw, label, part, header)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        with progress.Progress(what, total) as shown:
            size = image_size or expected or _static_size(examples)
            batches = mapped.ragged_batch(batch_size(keep, size))
            batches = batches.prefetch(2).with_options(_SCAN_OPTIONS)
            for pixels, shapes, facts, labels, parts in batches.as_numpy_iterator():
                for image, fact, label, part in _unbatched(pixels, shapes, facts, labels, parts):
                    _add(found, image, label, part, fact, memory_mb * MEBIBYTE)
                shown.add(len(labels))
    except (tf.errors.DataLossError, *images_lib.UNREADABLE) as error:
        raise on_error(error) from None
    return found


@functools.cache
def _scan_function(decode, image_size, keep, by_header):
    """The scan's map, `(raw, label, part, expected)` -> `(image, facts,
    label, part)`, as a `tf.function` made once per process for its
    arguments: each scan's map then calls the graph the first one traced
    instead of tracing it again (a split of 20 PNGs: 0.68 s traced, 0.30 s
    reused, on the 2-core AVX2 EPYC).

    `decode(raw)` gives the image, resized to `image_size` unless None, kept
    when `keep` (else an empty one) beside its `images.image_facts`. With
    `by_header`, an image whose header size differs from `expected` (int64
    `[2]`) is not decoded: it yields no image and `images.size_facts` of
    its size."""

    def decoded(raw):
        image = decode(raw)
        if image_size is not None:
            image = images_lib.resized(image, image_size)
        return image if keep else tf.zeros([0], tf.uint8), images_lib.image_facts(image)

    @tf.function(reduce_retracing=True)
    def scanned(raw, label, part, expected):
        if not by_header:
            return (*decoded(raw), label, part)
        size = tf.numpy_function(_header_size, [raw], tf.int64, stateful=False)
        other = tf.reduce_all(size >= 0) & tf.reduce_any(size != expected)
        image, facts = tf.cond(
            other,
            lambda: (tf.zeros([0], tf.uint8), images_lib.size_facts(tf.reshape(size, [2]))),
            lambda: decoded(raw),
        )
        return image, facts, label, part

    return scanned


def batch_size(keep, size):
    """Examples in a scan's batch: `SCAN_BATCH`, or as many kept images of
    `size` `(H, W)` as `SCAN_BATCH_BYTES` holds in RGB (at least one; one when
    the size is not known before decoding)."""
    if not keep:
        return SCAN_BATCH
    if size is None:
        return 1
    return max(1, min(SCAN_BATCH, SCAN_BATCH_BYTES // (3 * size[0] * size[1])))


def _static_size(examples):
    """The `(H, W)` every decoded image of `examples` has (a TFDS data set of
    one size), or None."""
    shape = examples.element_spec[0].shape
    return tuple(shape[:2]) if shape.rank == 3 and shape[:2].is_fully_defined() else None


def _flat(image, facts, label, part):
    """A scanned example with its image as a vector beside its shape, so that
    examples of any size batch (`ragged_batch`)."""
    return tf.reshape(image, [-1]), tf.shape(image, out_type=tf.int64), facts, label, part


def _unbatched(pixels, shapes, facts, labels, parts):
    """The `(image, facts, label, part)` of each example of a batch of
    `_flat` examples, in NumPy (`as_numpy_iterator` gives a ragged batch's
    vectors as an object array, a batch of one length as a 2-D array)."""
    for index, (image, shape) in enumerate(zip(pixels, shapes)):
        fact = {key: value[index] for key, value in facts.items()}
        yield image.reshape(shape), fact, labels[index], parts[index]


def _first_size(examples):
    """The header size of the first image of encoded `examples`, or None
    (decoded images, as TFDS gives them; no examples; an unknown header)."""
    if examples.element_spec[0].dtype != tf.string:
        return None
    for raw, _, _ in examples.take(1):
        return images_lib.header_size(raw.numpy())
    return None


def _header_size(encoded):
    """`images.header_size` as int64 `[2]`, `[-1, -1]` when unknown."""
    return np.array(images_lib.header_size(encoded) or (-1, -1), np.int64)


def _add(found, image, label, part, fact, budget):
    found.labels.append(int(label))
    found.parts.append(int(part))
    found.sizes.add(tuple(int(d) for d in fact["size"]))
    found.colour = found.colour or bool(fact["colour"])
    found.frame_sum += float(fact["frame_sum"])
    found.frame_count += int(fact["frame_count"])
    if fact["frame_count"]:  # not an image known by its header alone (`images.size_facts`)
        light, dark = images_lib.clear_shades(float(fact["frame_sum"]) / int(fact["frame_count"]))
        found.clearly_light += int(light)
        found.clearly_dark += int(dark)
    if found.images is None:
        return
    found.bytes += image.nbytes
    if found.bytes > budget:
        found.images = None
    else:
        found.images.append(image)


def assemble(scans, readers, image_size):
    """The `Split`s (in memory) or `StreamedSplit`s of scanned splits.

    Args:
        scans: the `SplitScan` of each split (train first).
        readers: the reader of each split.
        image_size: `(H, W)` the images were resized to, or None.

    Raises:
        ConfigError: the images differ in size and `image_size` is None, or
            a split has negative labels.
    """
    sizes = sorted(set().union(*(scan.sizes for scan in scans)))
    if len(sizes) > 1:
        raise images_lib.mixed_sizes(sizes)
    if any(min(scan.labels, default=0) < 0 for scan in scans):
        raise ConfigError(("data_dir",), "the data in {0} hold negative labels: number the "
                          "classes from 0")
    channels = 3 if any(scan.colour for scan in scans) else 1
    shape = (*sizes[0], channels)
    train_scan = scans[0]
    light = images_lib.MID_GREY < train_scan.frame_sum / max(1, train_scan.frame_count)
    background = "light" if light else "dark"
    single = not (train_scan.clearly_dark if light else train_scan.clearly_light)
    return [
        _split(scan, reader, shape, image_size, background, single)
        for scan, reader in zip(scans, readers)
    ]


def _split(scan, reader, shape, image_size, background, single_polarity):
    labels = np.array(scan.labels, np.int64)
    if scan.images is None:
        return StreamedSplit(reader, labels, shape, image_size, background, single_polarity)
    images = np.stack(scan.images) if scan.images else np.zeros((0, *shape), np.uint8)
    images = np.ascontiguousarray(images_lib.with_channels(images, shape[-1]))
    return Split(images, labels, background, single_polarity)
