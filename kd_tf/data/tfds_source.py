"""The TFDS source: TensorFlow Datasets, prepared in a data directory or downloaded."""

import contextlib
import functools
import tempfile

import numpy as np

from kd_tf.data import download_probe, scan
from kd_tf.data.streaming import DatasetReader
from kd_tf.errors import UserError


def tfds_builder(dataset, tfds_data_dir):
    """Create the TFDS builder of a data set.

    Arguments:
        dataset: TFDS name of the data set.
        tfds_data_dir: TFDS data directory, or `None` for the default.

    Returns:
        A `tfds.core.DatasetBuilder`.

    Raises:
        UserError: If TFDS has no data set of that name.
    """
    import tensorflow_datasets as tfds

    try:
        with _scratch_temporary_directory():
            builder = tfds.builder(dataset, data_dir=tfds_data_dir)
            _ = builder.info  # cached: TFDS initializes it here, in the scratch directory
        return builder
    except tfds.core.DatasetNotFoundError:
        raise UserError(
            f"TFDS has no data set named {dataset!r}: list the names with "
            "`python -c 'import tensorflow_datasets as tfds; "
            "print(tfds.list_builders())'` or see "
            "https://www.tensorflow.org/datasets/catalog/overview"
        ) from None


@contextlib.contextmanager
def _scratch_temporary_directory():
    """Points `tempfile` at a directory of its own, removed on exit: TFDS's
    `DatasetInfo.initialize_from_bucket` makes a `tmp*tfds` directory with
    `tempfile.mkdtemp` for each builder's info and never removes it, so
    every run would leave one in the system's temporary directory."""
    saved = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="kd_tf-tfds-") as scratch:
        tempfile.tempdir = scratch
        try:
            yield
        finally:
            tempfile.tempdir = saved


def read_tfds(builder, image_size=None, memory_mb=scan.DEFAULT_MEMORY_MB):
    """Read the train and test splits of a TFDS data set.

    If the data set is not prepared yet, it is downloaded, but only after
    its download host has answered; this keeps TFDS's long retry loop from
    running on a machine without network.

    Arguments:
        builder: The `tfds.core.DatasetBuilder` of the data set.

    Returns:
        A tuple `(train, test, class_names)`, the names of the label
        feature's classes in label order.

    Raises:
        UserError: If the data set is not an image classification data set
            with `train` and `test` splits, or it is not prepared and cannot
            be downloaded.
    """
    class_names = _tfds_class_names(builder)
    if not builder.is_prepared():
        download_probe.check_download_reachable(builder)
        builder.download_and_prepare()
    splits = set(builder.info.splits)
    if splits and not {"train", "test"} <= splits:
        raise UserError(
            f"TFDS data set {builder.name!r} has splits {sorted(splits)}, not "
            "train and test: pick a data set with both"
        )
    readers = [
        DatasetReader(functools.partial(_images_of, builder, name)) for name in ("train", "test")
    ]
    scans = [
        scan.scan_split(
            builder.as_dataset(split=name, as_supervised=True, shuffle_files=False).map(
                lambda image, label: (image, label, 0)
            ),
            reader.decode,
            image_size,
            memory_mb,
            lambda error: UserError(f"TFDS data set {builder.name!r} holds an image that cannot be read"),
            stored_bytes=_stored_bytes(builder, name),
            what=f"scanning TFDS {builder.name} {name}",
            total=builder.info.splits[name].num_examples if name in builder.info.splits else None,
        )
        for name, reader in zip(("train", "test"), readers)
    ]
    return (*scan.assemble(scans, readers, image_size), class_names)


def _stored_bytes(builder, split):
    """The size of a prepared TFDS split's files, or None when TFDS does not say."""
    splits = builder.info.splits
    return (splits[split].num_bytes or None) if split in splits else None


def _images_of(builder, split):
    """The images of a TFDS split, in order."""
    return builder.as_dataset(split=split, as_supervised=True, shuffle_files=False).map(
        lambda image, label: image
    )


def _tfds_class_names(builder):
    """Check that a TFDS data set classifies uint8 images of 1 or 3 channels.

    Arguments:
        builder: The `tfds.core.DatasetBuilder` of the data set.

    Returns:
        The names of its label feature's classes, in label order.

    Raises:
        UserError: If the data set is not of that kind.
    """
    import tensorflow_datasets as tfds

    info = builder.info
    keys = info.supervised_keys
    problem = UserError(
        f"TFDS data set {builder.name!r} is not an image classification data "
        "set with uint8 images of 1 or 3 channels: pick one such as mnist, "
        "fashion_mnist or cifar10"
    )
    if not (
        isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(key, str) for key in keys)
    ):
        raise problem
    image, label = info.features[keys[0]], info.features[keys[1]]
    if (
        not isinstance(image, tfds.features.Image)
        or image.shape[-1] not in (1, 3)
        or np.dtype(image.np_dtype) != np.uint8
        or not isinstance(label, tfds.features.ClassLabel)
    ):
        raise problem
    return tuple(label.names)
