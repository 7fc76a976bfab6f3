"""Splits read from their files while training, never held whole in memory.

A `StreamedSplit` knows its labels (8 bytes an example), its image shape and
how to read its images: a reader yields `(index, raw)` pairs, where `raw` is
an image's encoded bytes (image files, TFRecords) or a decoded image (TFDS),
and the split turns `raw` into the data set's uint8 image (decoded, resized
to `--image_size`, with the data set's channels) when it is read.

Readers:
- `FileReader`: one file per image (`--data_source=directory`), read in any
  order, so a training pass reads the files in the order of a permutation
  drawn from its key, exactly as an in-memory split is gathered.
- `RecordReader`: TFRecord files (`--data_source=tfrecord`), read in
  sequence. A training pass reads the files in a permuted order, up to
  `INTERLEAVE_FILES` at once, and permutes each window of `SHUFFLE_WINDOW`
  consecutive examples; every example is seen once per pass.
- `DatasetReader`: a data set read in one sequence (TFDS), whose windows
  are permuted as the `RecordReader`'s.

Every pass is a function of its key alone, so every iterator, worker and
rerun reads the same examples in the same order.

Usage:

```python
split = StreamedSplit(FileReader(paths), labels, (64, 64, 3), None, "dark", single_polarity=True)
for passes, indices, images in split.batched_passes(seed=0, batch_size=128):
    ...
```
"""

import numpy as np
import tensorflow as tf

from kd_tf.data import images as images_lib
from kd_tf.data.splits import SplitReading, pass_key, permutations

# Examples a sequential reader permutes at a time, and files it reads at once.
SHUFFLE_WINDOW = 16384
INTERLEAVE_FILES = 4


def _permuted(window, key, number):
    """The `(indices, raws)` of a window in the order of a permutation drawn
    from `key` folded with the window's `number`."""
    indices, raws = window
    order = tf.random.experimental.stateless_shuffle(
        tf.range(tf.size(indices, out_type=tf.int64)),
        seed=tf.random.experimental.stateless_fold_in(key, number),
    )
    return tf.gather(indices, order), tf.gather(raws, order)


def sequential_passes(seed, read_pass):
    """Endless `(pass, index, raw)` of a reader that reads in sequence:
    `read_pass(key)` gives pass p's `(index, raw)` for the key `(seed, p)`."""

    def one_pass(pass_number):
        examples = read_pass(pass_key(seed, pass_number))
        return examples.map(lambda index, raw: (pass_number, index, raw))

    return tf.data.Dataset.counter().flat_map(one_pass)


def windows_permuted(examples, key):
    """`(index, raw)` examples with each window of `SHUFFLE_WINDOW` permuted
    (see `_permuted`)."""
    windows = tf.data.Dataset.zip((examples.batch(SHUFFLE_WINDOW), tf.data.Dataset.counter()))
    return windows.map(lambda window, number: _permuted(window, key, number)).unbatch()


class FileReader:
    """Image files, one per example, read in any order."""

    decode = staticmethod(images_lib.decode)

    def __init__(self, paths):
        self.paths = list(paths)

    def subset(self, start, end):
        return FileReader(self.paths[start:end])

    def _read(self, examples):
        """`(..., index)` elements with the bytes of file `index` appended."""
        paths = tf.constant(self.paths, tf.string)
        return examples.map(
            lambda *numbers: (*numbers, tf.io.read_file(tf.gather(paths, numbers[-1]))),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def in_order(self):
        return self._read(tf.data.Dataset.range(len(self.paths)))

    def passes(self, seed):
        return self._read(permutations(len(self.paths), seed))


class RecordReader:
    """TFRecord files read in sequence (see the module doc).

    Args:
        files: the files, in order.
        counts: the records of each file.
        parse: a record (scalar string) -> the encoded image.
        start, end: the examples of the files' concatenation this reader
            yields, renumbered from 0.
    """

    decode = staticmethod(images_lib.decode)

    def __init__(self, files, counts, parse, start=0, end=None):
        self.files, self.counts, self.parse = list(files), list(counts), parse
        self.start = start
        self.end = sum(self.counts) if end is None else end

    def subset(self, start, end):
        return RecordReader(
            self.files, self.counts, self.parse, self.start + start, self.start + end
        )

    def _numbered(self, file_numbers, parallel):
        """The records of the files `file_numbers` (a dataset), as
        `(index, encoded)` within this reader's range."""
        paths, offsets = tf.constant(self.files), tf.constant(np.cumsum([0] + self.counts[:-1]))
        start, end = self.start, self.end

        def records(number):
            return tf.data.Dataset.zip(
                (
                    tf.data.Dataset.counter(tf.gather(offsets, number)),
                    records_of(tf.gather(paths, number)),
                )
            )

        examples = file_numbers.interleave(
            records,
            cycle_length=min(INTERLEAVE_FILES, len(self.files)) if parallel else 1,
            num_parallel_calls=tf.data.AUTOTUNE if parallel else None,
            deterministic=True,
        )
        return examples.filter(lambda index, _: (index >= start) & (index < end)).map(
            lambda index, record: (index - start, self.parse(record))
        )

    def in_order(self):
        numbers = tf.data.Dataset.range(len(self.files))
        return self._numbered(numbers, parallel=False)

    def passes(self, seed):
        def read_pass(key):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(len(self.files), dtype=tf.int64), seed=key
            )
            numbers = tf.data.Dataset.from_tensor_slices(order)
            return windows_permuted(self._numbered(numbers, parallel=True), key)

        return sequential_passes(seed, read_pass)


def records_of(path):
    """The records of a TFRecord file, gzip-compressed when its name ends in `.gz`."""
    compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
    return tf.data.TFRecordDataset(path, compression_type=compression)


class DatasetReader:
    """Decoded images `[h, w, 1 or 3]` read in one sequence (a TFDS split).

    Args:
        make_dataset: () -> a `tf.data.Dataset` of images, in order.
        start, end: the examples yielded, renumbered from 0.
    """

    decode = staticmethod(images_lib.as_rgb)

    def __init__(self, make_dataset, start=0, end=None):
        self.make_dataset, self.start, self.end = make_dataset, start, end

    def subset(self, start, end):
        return DatasetReader(self.make_dataset, self.start + start, self.start + end)

    def in_order(self):
        examples = self.make_dataset().skip(self.start)
        if self.end is not None:
            examples = examples.take(self.end - self.start)
        return examples.enumerate()

    def passes(self, seed):
        return sequential_passes(seed, lambda key: windows_permuted(self.in_order(), key))


class StreamedSplit(SplitReading):
    """A split whose images are read from their source when needed.

    Args:
        reader: a `FileReader`, `RecordReader` or `DatasetReader`.
        labels: int64 array `[N]`.
        image_shape: `(H, W, C)` of the data set's images.
        image_size: `(H, W)` to resize to, or None (every image has that size).
        background: the training images' polarity (`images.background`).
        single_polarity: whether every training image keeps to it
            (`images.single_polarity`).
    """

    in_memory = False

    def __init__(self, reader, labels, image_shape, image_size, background, single_polarity):
        self.reader, self.labels = reader, labels
        self.image_shape, self.image_size = tuple(image_shape), image_size
        self.background, self.single_polarity = background, single_polarity

    def subset(self, start, end):
        """Examples `start` to `end` (excluded), as a `StreamedSplit`."""
        return StreamedSplit(
            self.reader.subset(start, end), self.labels[start:end], self.image_shape,
            self.image_size, self.background, self.single_polarity,
        )

    def image(self, raw):
        """The uint8 image `[H, W, C]` of a reader's `raw`."""
        image = self.reader.decode(raw)
        if self.image_size is not None:
            image = images_lib.resized(image, self.image_size)
        return tf.ensure_shape(
            images_lib.with_channels(image, self.image_shape[-1]), self.image_shape
        )

    def _images(self, examples):
        return examples.map(
            lambda index, raw: (index, self.image(raw)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def in_order(self):
        return self._images(self.reader.in_order())

    def batched_passes(self, seed, batch_size):
        """Endless passes over the split in batches of `(passes, indices,
        images)`, pass p read in the order its reader draws from `(seed, p)`
        (see the module doc)."""
        return self.reader.passes(seed).map(
            lambda pass_number, index, raw: (pass_number, index, self.image(raw)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        ).batch(batch_size)
