"""TFRecord files as a data set: `--data_source=tfrecord --data_dir=DIR`.

`DIR` holds the training files `train*.tfrecord*` and the test files
`test*.tfrecord*` (sharded as `train-00000-of-00008.tfrecord`, say; gzip
compressed when the name ends in `.gz`). Each record is a `tf.train.Example`
with the features of TensorFlow's image-classification TFRecords:

| feature | type | what |
|---|---|---|
| `image/encoded` | bytes | the encoded image: PNG, JPEG, BMP or GIF |
| `image/class/label` | int64 | the class, from 0 |

Other features are ignored. Records are numbered in file-name order and
decoded as `kd_tf.data.images.decode` does (one size unless `image_size`,
grayscale or colour). The classes are named by `DIR/labels.txt` when it is
there, one name a line in label order (the TF Serving and TFLite
convention); without it they are named by their labels (`0`, `1`, ...,
up to the largest label), which is logged.
One scan (`kd_tf.data.scan`) reads labels and checks images in the same
pass; a split is then held in memory when it fits `--data_memory_mb`, else
read from its files while training (`kd_tf.data.streaming.RecordReader`).

Usage:

```python
train, test = tfrecord.read_tfrecords("records", image_size=(64, 64))
tfrecord.example(png_bytes, 3)  # one record, as a writer of such files makes it
```
"""

import glob
import os

import tensorflow as tf

from kd_tf.data import images
from kd_tf.data.scan import DEFAULT_MEMORY_MB, assemble, scan_split, stored_bytes
from kd_tf.data.streaming import RecordReader, records_of
from kd_tf.errors import ConfigError

# The class names beside the records, one a line in label order.
LABELS_FILE = "labels.txt"
FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def example(encoded_image, label):
    """One serialized record of the feature spec above."""
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded_image])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def read_tfrecords(data_dir, image_size=None, memory_mb=DEFAULT_MEMORY_MB):
    """The train and test splits of the TFRecord files in `data_dir`.

    Raises:
        ConfigError: the directory or a split's files are missing, a file is
            not TFRecords, a split has no record, the training records hold one
            class, a record does not follow the feature spec, an image does not
            decode, or images differ in size without `image_size`.
    """
    if not os.path.isdir(data_dir):
        raise ConfigError(("data_dir",), f"{{0}}={data_dir} is not a directory: pass the "
                          "directory of the train*.tfrecord and test*.tfrecord files")
    files = [_files(data_dir, name) for name in ("train", "test")]
    scans = [
        scan_split(
            tf.data.Dataset.from_tensor_slices(paths)
            .enumerate()
            .flat_map(
                lambda part, path: records_of(path).map(
                    lambda record: (*_image_and_label(record), part)
                )
            ),
            images.decode,
            image_size,
            memory_mb,
            lambda error, paths=paths: _unreadable(error, paths),
            stored_bytes=stored_bytes(paths),
            what=f"scanning the {name} records in {data_dir}",
        )
        for name, paths in zip(("train", "test"), files)
    ]
    for name, paths, scan in zip(("train", "test"), files, scans):
        if not scan.labels:
            raise ConfigError(("data_dir",), f"the {name}*.tfrecord files of {{0}}={data_dir} "
                              "hold no record: pass a directory holding both the train and the "
                              "test records")
    if len(set(scans[0].labels)) < 2:
        raise ConfigError(("data_dir",), f"the train records of {{0}}={data_dir} hold one class "
                          f"only (label {scans[0].labels[0]}): pass records of at least two "
                          "classes")
    readers = [
        RecordReader(paths, scan.counts(len(paths)), _image) for paths, scan in zip(files, scans)
    ]
    return tuple(assemble(scans, readers, image_size))


def _files(data_dir, name):
    files = sorted(glob.glob(os.path.join(data_dir, f"{name}*.tfrecord*")))
    if not files:
        raise ConfigError(
            ("data_dir",),
            f"{{0}}={data_dir} has no {name}*.tfrecord files: pass a directory holding both "
            "the train and the test files",
        )
    return files


def _parse(record):
    return tf.io.parse_single_example(record, FEATURES)


def _image_and_label(record):
    parsed = _parse(record)
    return parsed["image/encoded"], parsed["image/class/label"]


def _image(record):
    return _parse(record)["image/encoded"]


def _unreadable(error, paths):
    """The error for a scan of `paths` stopped by `error`: a file that is not
    TFRecords (named), else a record that is not an image example."""
    if isinstance(error, tf.errors.InvalidArgumentError):
        return _malformed(", ".join(paths))
    for path in paths:
        try:
            for _ in records_of(path):
                pass
        except (tf.errors.DataLossError, *images.UNREADABLE):
            return ConfigError(("data_dir",), f"cannot read {path} as a TFRecord file (truncated, "
                               "corrupt or another format): fix the files in {0}")
    return _malformed(", ".join(paths))


def _malformed(where):
    return ConfigError(
        ("data_dir",),
        f"{where} holds a record that is not an image-classification example ("
        + ", ".join(FEATURES)
        + ", with an image that decodes): fix the files in {0}",
    )
