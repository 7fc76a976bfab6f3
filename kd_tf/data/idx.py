"""The IDX source: the four IDX files of an MNIST-format data set in a directory."""

import gzip
import pathlib
import zlib

import numpy as np

from kd_tf.data.splits import Split
from kd_tf.errors import ConfigError, UserError

_IDX_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_IDX_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# The config fields `IDX_HINT` names as {0} and {1}: a `ConfigError` that uses
# the hint lists them first.
IDX_FIELDS = ("data_source", "idx_dir")
IDX_HINT = (
    "{0}=idx {1}=DIR with DIR holding the four IDX files "
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
        raise ConfigError(IDX_FIELDS, f"{{1}} {idx_dir} is not a directory: pass {IDX_HINT}")
    train = _read_idx_split(directory, *_IDX_TRAIN)
    test = _read_idx_split(directory, *_IDX_TEST)
    return train, test


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
    raise UserError(f"IDX file {directory / name} (or {name}.gz) not found: pass {IDX_HINT}")


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
