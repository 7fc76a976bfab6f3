"""TFRecord files as a data set: `--data_source=tfrecord --data_dir=DIR`.

`DIR` holds the training files `train*.tfrecord*` and the test files
`test*.tfrecord*` (sharded as `train-00000-of-00008.tfrecord`, say; gzip
compressed when the name ends in `.gz`). Each record is a `tf.train.Example`
with the features of TensorFlow's image-classification TFRecords:

| feature | type | what |
|---|---|---|
| `image/encoded` | bytes | the encoded image: PNG, JPEG, BMP or GIF |
| `image/class/label` | int64 | the class, from 0 |

Other features are ignored. Records are read in file-name order, then decoded
as `kd_tf.data.images.decode_images` does (one size unless `image_size`,
grayscale or colour); the number of classes is the largest label plus one.

Usage:

```python
train, test = tfrecord.read_tfrecords("records", image_size=(64, 64))
tfrecord.example(png_bytes, 3)  # one record, as a writer of such files makes it
```
"""

import glob
import os

import numpy as np
import tensorflow as tf

from kd_tf.data.images import UNREADABLE, decode_images, mixed_sizes
from kd_tf.data.splits import Split
from kd_tf.errors import ConfigError

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


def read_tfrecords(data_dir, image_size=None):
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
    train, test = (_read_split(data_dir, name, image_size) for name in ("train", "test"))
    if len(set(train.labels)) < 2:
        raise ConfigError(("data_dir",), f"the train records of {{0}}={data_dir} hold one class "
                          f"only (label {train.labels[0]}): pass records of at least two classes")
    sizes = {train.images.shape[1:3], test.images.shape[1:3]}
    if len(sizes) > 1:
        raise mixed_sizes(sizes)
    return train, test


def _read_split(data_dir, name, image_size):
    files = sorted(glob.glob(os.path.join(data_dir, f"{name}*.tfrecord*")))
    if not files:
        raise ConfigError(
            ("data_dir",),
            f"{{0}}={data_dir} has no {name}*.tfrecord files: pass a directory holding both "
            "the train and the test files",
        )
    labels = []
    for path in files:
        try:
            labels += [int(label) for label in _records(path).map(_label)]
        except tf.errors.InvalidArgumentError:
            raise _malformed(path) from None
        except (tf.errors.DataLossError, *UNREADABLE):
            raise ConfigError(("data_dir",), f"cannot read {path} as a TFRecord file (truncated, "
                              "corrupt or another format): fix the files in {0}") from None
    if not labels:
        raise ConfigError(("data_dir",), f"the {name}*.tfrecord files of {{0}}={data_dir} hold no "
                          "record: pass a directory holding both the train and the test records")
    if min(labels, default=0) < 0:
        raise ConfigError(("data_dir",), f"{name} records of {{0}} hold negative labels: "
                          "number the classes from 0")
    encoded = tf.data.Dataset.from_tensor_slices(files).flat_map(_records).map(_image)
    images = decode_images(encoded, image_size, lambda: _malformed(", ".join(files)))
    return Split(images, np.array(labels, np.int64))


def _records(path):
    compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
    return tf.data.TFRecordDataset(path, compression_type=compression)


def _parse(record):
    return tf.io.parse_single_example(record, FEATURES)


def _label(record):
    return _parse(record)["image/class/label"]


def _image(record):
    return _parse(record)["image/encoded"]


def _malformed(where):
    return ConfigError(
        ("data_dir",),
        f"{where} holds a record that is not an image-classification example ("
        + ", ".join(FEATURES)
        + ", with an image that decodes): fix the files in {0}",
    )
