"""Image folders as a data set: `--data_source=directory --data_dir=DIR`.

The layout is Keras's (`keras.utils.image_dataset_from_directory`): one
subfolder per class, named as the class, holding its images (PNG, JPEG, BMP,
GIF; grayscale or colour; other files are ignored). Either

- `DIR/train/<class>/...` and `DIR/test/<class>/...`, the two splits, and
  optionally `DIR/validation/<class>/...` (or `DIR/val/`), the validation
  split (else it is held out from the end of the training images); every
  class of `train/` must have images in the others, and they may hold no
  other class (a class the model never saw cannot be scored); or
- `DIR/<class>/...`, from which every `round(1 / test_fraction)`-th image of
  each class, in file-name order, is held out as the test split.

Classes are named after their folders and numbered in the sorted order of
the names, except that folders named by integers (`0` ... `10`) come first,
in numeric order: folder `2` is class 2 (as a string, `10` sorts before `2`).
The training
images come in a fixed pseudo-random order (the same on every run, whatever
`--seed`), so that a validation split held out from their end, and the first
`--train_examples`, cover every class; the validation and test images stay
in class and file-name order. Images are
decoded as `kd_tf.data.images.decode` decodes them; one scan
(`kd_tf.data.scan`) checks them all, and each split is then held in memory
when it fits `--data_memory_mb`, else read from its files while training
(`kd_tf.data.streaming.FileReader`).

Usage:

```python
folders = directory.read_directory("photos", image_size=(64, 64))
folders.train, folders.validation, folders.test, folders.classes
```
"""

import os
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from kd_tf.data.images import UNREADABLE, decode
from kd_tf.data.scan import DEFAULT_MEMORY_MB, assemble, scan_split, stored_bytes
from kd_tf.data.streaming import FileReader
from kd_tf.errors import ConfigError, UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
DEFAULT_TEST_FRACTION = 0.2
# The names a validation folder beside `train/` and `test/` may have.
VALIDATION_FOLDERS = ("validation", "val")


class FolderSplits(NamedTuple):
    """The splits of an image-folder tree (`Split` or `StreamedSplit`, or
    their `(path, label)` lists, see `listed_files`); `validation` is None
    when the tree has no validation folder."""

    train: object
    validation: object
    test: object
    classes: list


def read_directory(
    data_dir, image_size=None, test_fraction=DEFAULT_TEST_FRACTION, memory_mb=DEFAULT_MEMORY_MB
):
    """The splits of an image-folder tree (see the module doc), scanned
    (`kd_tf.data.scan`) and kept in memory or streamed.

    Args:
        data_dir: the tree's root.
        image_size: `(H, W)` to resize every image to, or None.
        test_fraction: without `test/`, the share of each class held out.
        memory_mb: the largest split (decoded, MiB) held in memory.

    Returns:
        A `FolderSplits`, its classes sorted.

    Raises:
        ConfigError: the directory is missing or empty, holds one class, has
            `train/` without `test/` (or the reverse), a class of `train/`
            has no images in `test/` (or the validation folder) or a class
            folder there is not in `train/`, an image cannot be read, or
            images differ in size without `image_size`.
    """
    files = listed_files(data_dir, test_fraction)
    # The training split first: the scan takes the background from it.
    parts = (files.train, files.validation, files.test)
    scanned = iter(_scanned([part for part in parts if part is not None], image_size, memory_mb))
    return FolderSplits(*(None if part is None else next(scanned) for part in parts), files.classes)


def listed_files(data_dir, test_fraction=DEFAULT_TEST_FRACTION):
    """The `(path, label)` lists of a tree's splits, in the order
    `read_directory` reads them, as a `FolderSplits` of lists.

    Raises:
        ConfigError: as `read_directory`, before any image is read.
    """
    if not os.path.isdir(data_dir):
        raise ConfigError(("data_dir",), f"{{0}}={data_dir} is not a directory: pass the root "
                          "of a tree with one subfolder of images per class")
    train_dir = os.path.join(data_dir, "train")
    if _has_split_folders(data_dir):
        classes = _classes(train_dir)
        train = _files(train_dir, classes)
        test = _split_files(os.path.join(data_dir, "test"), classes, train_dir, "test")
    else:
        _check_no_lone_split_folders(data_dir)
        classes = _classes(data_dir)
        train, test = _held_out(_files(data_dir, classes), test_fraction)
    # A fixed shuffle, so that a held-out validation split (the last training
    # images) and the first --train_examples cover every class; it does not
    # depend on --seed, so neither do the splits.
    train = [train[i] for i in np.random.default_rng(0).permutation(len(train))]
    validation_dir = validation_folder(data_dir)
    validation = (
        None if validation_dir is None
        else _split_files(validation_dir, classes, train_dir, "validation")
    )
    return FolderSplits(train, validation, test, classes)


def _has_split_folders(data_dir):
    return all(os.path.isdir(os.path.join(data_dir, name)) for name in ("train", "test"))


def _check_no_lone_split_folders(data_dir):
    """Refuse a tree with split folders (`train/`, `test/`, a validation
    folder: ones holding class folders, not images) but not both `train/`
    and `test/`: taken for a tree of class folders, it would be misread."""
    found = [
        name for name in ("train", "test", *VALIDATION_FOLDERS)
        if _holds_class_folders(os.path.join(data_dir, name))
    ]
    if not found:
        return
    missing = [name for name in ("train", "test") if name not in found]
    hold_out = ", or move the class folders of train/ up into {0} to hold out a test split"
    raise ConfigError(
        ("data_dir",),
        f"{{0}}={data_dir} has {' and '.join(f'{name}/' for name in found)} but no "
        f"{' or '.join(f'{name}/' for name in missing)}: add "
        f"{' and '.join(os.path.join(data_dir, name) for name in missing)} with one folder "
        f"of images per class{hold_out if found == ['train'] else ''}",
    )


def _holds_class_folders(folder):
    """Whether `folder` holds subfolders and no image: a split folder, not a class."""
    return os.path.isdir(folder) and bool(_subfolders(folder)) and not _images_in(folder)


def validation_folder(data_dir):
    """The validation folder of a tree with `train/` and `test/` (one of
    `VALIDATION_FOLDERS`), or None (also for a tree of class folders, where
    a folder of that name is a class).

    Raises:
        ConfigError: the tree has more than one.
    """
    if not _has_split_folders(data_dir):
        return None
    found = [
        os.path.join(data_dir, name) for name in VALIDATION_FOLDERS
        if os.path.isdir(os.path.join(data_dir, name))
    ]
    if len(found) > 1:
        raise ConfigError(
            ("data_dir",),
            f"{{0}}={data_dir} holds {' and '.join(found)}: keep one validation folder",
        )
    return found[0] if found else None


def _scanned(listed, image_size, memory_mb):
    """The splits (`scan.assemble`) of the `(path, label)` lists `listed`,
    the training split first."""
    readers = [FileReader([path for path, _ in files]) for files in listed]
    scans = [
        scan_split(
            tf.data.Dataset.from_tensor_slices(
                (
                    tf.constant(reader.paths, tf.string),
                    tf.constant([label for _, label in files], tf.int64),
                    tf.zeros([len(files)], tf.int64),
                )
            ).map(lambda path, label, part: (tf.io.read_file(path), label, part)),
            reader.decode,
            image_size,
            memory_mb,
            lambda error, paths=reader.paths: _unreadable(paths),
            stored_bytes=stored_bytes(reader.paths),
            what=f"scanning {os.path.commonpath(reader.paths) if reader.paths else 'no files'}",
            total=len(reader.paths),
        )
        for reader, files in zip(readers, listed)
    ]
    return assemble(scans, readers, image_size)


def _subfolders(root):
    """The names of the folders in `root`, hidden ones left out, in
    `class_order`."""
    return sorted(
        (
            name for name in os.listdir(root)
            if os.path.isdir(os.path.join(root, name)) and not name.startswith(".")
        ),
        key=class_order,
    )


def _images_in(folder):
    """The sorted names of the image files in `folder` (none if it is missing)."""
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return [name for name in names if name.lower().endswith(IMAGE_EXTENSIONS)]


def _classes(root):
    classes = _subfolders(root)
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "no class folders"
        raise ConfigError(
            ("data_dir",),
            f"{{0}}={root} holds {found}: pass a tree with one subfolder of images per class, "
            "at least two classes",
        )
    return classes


def class_order(name):
    """The sort key of a class folder: its name, but an integer name (ASCII
    digits) as its number, before any other name (`2` before `10`)."""
    if name.isascii() and name.isdigit():
        return (0, int(name), name)
    return (1, 0, name)


def _files(root, classes, missing=None):
    """`(path, label)` of every image under `root/<class>/`, in class then
    name order; `missing(folder)` is the error for a class whose folder
    holds no image or is missing (default: fill or remove the folder)."""
    files = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        found = _images_in(folder)
        if not found:
            raise (missing or _empty_class)(folder)
        files += [(os.path.join(folder, n), label) for n in found]
    return files


def _empty_class(folder):
    return ConfigError(
        ("data_dir",),
        f"class folder {folder} holds no image ({', '.join(IMAGE_EXTENSIONS)}): add "
        "images or remove the folder from {0}",
    )


def _split_files(root, classes, train_dir, split):
    """`_files` of the `split` ("test" or "validation") folder `root` of a
    tree whose classes are those of `train_dir`: every class needs images
    there, and a class folder the training split lacks is refused (a class
    the model never saw cannot be scored)."""
    unseen = [os.path.join(root, name) for name in _subfolders(root) if name not in classes]
    if unseen:
        raise ConfigError(
            ("data_dir",),
            f"{', '.join(unseen)}: no such class in {train_dir}, and a class without training "
            f"images cannot be learnt or scored: add its training images to {train_dir}, or "
            "remove the folder from {0}",
        )

    def missing(folder):
        name = os.path.basename(folder)
        return ConfigError(
            ("data_dir",),
            f"class {name!r} of {train_dir} has no {split} image: add {folder} with its "
            f"{split} images ({', '.join(IMAGE_EXTENSIONS)}), or remove "
            f"{os.path.join(train_dir, name)} to drop the class",
        )

    return _files(root, classes, missing)


def _held_out(files, test_fraction):
    """Every `round(1 / test_fraction)`-th file of each class goes to the test split."""
    step = _step(test_fraction)
    train, test, seen = [], [], {}
    for path, label in files:
        seen[label] = seen.get(label, 0) + 1
        (test if seen[label] % step == 0 else train).append((path, label))
    return train, test


def _step(test_fraction):
    return max(2, round(1 / test_fraction))


def no_test_images(data_dir, test_fraction):
    """The error for class folders too small to hold out a test image (a run
    needs one; `read_directory` returns an empty test split)."""
    step = _step(test_fraction)
    return ConfigError(
        ("data_dir", "test_fraction"),
        f"{{0}}={data_dir} leaves no test image: {{1}}={test_fraction} holds out one image in "
        f"{step} of a class and no class has {step}: add images, or train/ and test/ folders",
    )


def _unreadable(paths):
    """The error naming the first of `paths` that does not decode."""
    for path in paths:
        try:
            decode(tf.io.read_file(path))
        except UNREADABLE:
            return ConfigError(
                ("data_dir",), f"cannot read {path} as an image: fix or remove it from {{0}}"
            )
    return UserError("an image of the data set cannot be decoded")
