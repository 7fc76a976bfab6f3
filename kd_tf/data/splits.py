"""The splits of a data set: `Split`, `DataSplits` and how they are cut.

Every source reads an original training and test split; `make_splits` holds
out the last `validation_examples` training images as the validation split
(by default `default_validation_examples`: 5000, or a twelfth of the training
split when that is smaller), unless the source has a validation split of its
own (an image-folder tree's `validation/`), and assembles the `DataSplits`.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from kd_tf import progress
from kd_tf.data import images as images_lib
from kd_tf.errors import ConfigError, UserError

# The default validation split: at most this many images ...
MAX_DEFAULT_VALIDATION_EXAMPLES = 5000
# ... and at most this share of the training split (MNIST's 60,000 / 12 = 5000).
DEFAULT_VALIDATION_SHARE = 12


class SplitReading:
    """What every split offers besides its `labels`, built on `in_order()`
    (a `tf.data.Dataset` of `(index, image)`, in index order)."""

    def __len__(self):
        return len(self.labels)

    def batched_in_order(self, batch_size):
        """`in_order()` in batches of `(indices, images)`."""
        return self.in_order().batch(batch_size)

    def batches(self, batch_size):
        """A finite, ordered `tf.data.Dataset` of `(images, labels)` batches."""
        labels = tf.constant(self.labels)
        return self.batched_in_order(batch_size).map(
            lambda indices, images: (images, tf.gather(labels, indices))
        )

    def map_batches(self, function, batch_size, what="measuring"):
        """`function` (uint8 images -> `[batch, ...]` tensor) over the split,
        in order, as one numpy array; `what` names it in its progress."""
        outputs = []
        with progress.Progress(what, len(self)) as shown:
            for images, _ in self.batches(batch_size):
                outputs.append(function(images).numpy())
                shown.add(len(images))
        return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)

    def head(self, count):
        """The first `count` images, uint8 `[count, H, W, C]`."""
        return self.take(np.arange(min(count, len(self))))

    def take(self, indices):
        """The images at `indices` (in that order), uint8 `[len(indices), H, W, C]`."""
        indices = np.asarray(indices, np.int64)
        wanted = tf.constant(np.unique(indices))
        picked = self.in_order().filter(
            lambda index, image: tf.reduce_any(tf.equal(index, wanted))
        )
        found = {int(index): image for index, image in picked.as_numpy_iterator()}
        if not indices.size:
            return np.zeros((0, *self.image_shape), np.uint8)
        return np.stack([found[int(index)] for index in indices])


def pass_key(seed, pass_number):
    """The stateless key of pass `pass_number` of a stream seeded `seed`."""
    return tf.stack([tf.constant(seed, tf.int64), pass_number])


def permutations(count, seed):
    """Endless `(pass, index)`: pass p visits `range(count)` in the order of
    the permutation drawn from `(seed, p)` with stateless ops.

    Only integers are made inside the pass: a pipeline reads what an index
    stands for (an image, a file's path) after it, at its top level, since a
    large constant inside a nested `tf.data` function is copied by every
    rewrite of the pipeline's graph (measured: +690 MB for 347,000 paths).
    """

    def one_pass(pass_number):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=pass_key(seed, pass_number)
        )
        return tf.data.Dataset.from_tensor_slices(order).map(lambda index: (pass_number, index))

    return tf.data.Dataset.counter().flat_map(one_pass)


@dataclasses.dataclass(frozen=True, eq=False)
class Split(SplitReading):
    """One split of an image classification data set, held in memory.

    Arguments:
        images: `uint8` array of shape `[N, H, W, C]`.
        labels: `int64` array of shape `[N]`, the class of each image.
        known_background: the polarity of the images the split was cut
            from (a scan's), or None to take it from `images`.
        known_single_polarity: whether every image the split was cut from
            keeps to that polarity (a scan's), or None to take it from `images`.
    """

    images: np.ndarray
    labels: np.ndarray
    known_background: str | None = None
    known_single_polarity: bool | None = None
    in_memory = True

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

    @property
    def image_shape(self):
        return tuple(int(d) for d in self.images.shape[1:])

    @property
    def background(self):
        """`images.background` of the split (or `known_background`)."""
        return self.known_background or images_lib.background(self.images)

    @property
    def single_polarity(self):
        """`images.single_polarity` of the split (or `known_single_polarity`)."""
        if self.known_single_polarity is not None:
            return self.known_single_polarity
        return images_lib.single_polarity(self.images, self.background)

    def subset(self, start, end):
        """Examples `start` to `end` (excluded), as a `Split`."""
        return Split(
            self.images[start:end], self.labels[start:end], self.known_background,
            self.known_single_polarity,
        )

    def in_order(self):
        # Sliced by tf.data itself: a traced function per example (a `map`)
        # took 0.3 s of CPU per pass over the 10,000 MNIST test images, this 0.02 s.
        indices = tf.range(len(self), dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((indices, tf.constant(self.images)))

    def batched_in_order(self, batch_size):
        """`in_order()` in batches, gathered a batch at a time."""
        images = tf.constant(self.images)
        return tf.data.Dataset.range(len(self)).batch(batch_size).map(
            lambda indices: (indices, tf.gather(images, indices))
        )

    def batched_passes(self, seed, batch_size):
        """Endless passes over the split in batches of `(passes, indices,
        images)`: pass p in the order of the permutation drawn from
        `(seed, p)` (`permutations`), gathered a batch at a time."""
        images = tf.constant(self.images)
        return (
            permutations(len(self), seed)
            .batch(batch_size)
            .map(lambda passes, indices: (passes, indices, tf.gather(images, indices)))
        )

    def take(self, indices):
        return self.images[np.asarray(indices, np.int64)]


@dataclasses.dataclass(frozen=True, eq=False)
class DataSplits:
    """The train, validation and test splits of one data set.

    Arguments:
        dataset: Name of the data set, e.g. `"mnist"`.
        source: The source the data came from (a `kd_tf.data.DATA_SOURCES`
            name other than `"auto"`).
        train: The training split.
        validation: The validation split, held out from the original
            training split.
        test: The original test split.
        class_names: The name of each class, in label order (see
            `kd_tf.data.sources`).
        image_shape: `(H, W, C)` of every image.
    """

    dataset: str
    source: str
    train: Split
    validation: Split
    test: Split
    class_names: tuple
    image_shape: tuple

    @property
    def num_classes(self):
        """Number of classes."""
        return len(self.class_names)

    def fingerprint(self):
        """A short digest of what identifies the data for resuming a run:
        the source, the data set's name, image shape and class names, the
        labels of each split in order (which change when images are added,
        removed or moved between classes), and what its images are read
        from: the images themselves when held in memory (other IDX files,
        another slice), the paths and sizes of the files of a streamed split
        (a file rewritten with the same size is not seen: reading every file
        again would cost a pass over the data; a file put back as it was is
        the same data). A streamed TFDS split is known by its labels.

        Usage: `splits.fingerprint()` is e.g. `"61440 examples, sha256 9f1c2b7a30d4e8a1"`.
        """
        digest = hashlib.sha256(
            json.dumps(
                [self.source, self.dataset, list(self.image_shape), list(self.class_names)]
            ).encode("utf-8")
        )
        splits = (self.train, self.validation, self.test)
        for split in splits:
            digest.update(np.int64(len(split)).tobytes())
            digest.update(np.ascontiguousarray(split.labels, np.int64).tobytes())
            if split.in_memory:
                digest.update(np.ascontiguousarray(split.images).data)
            else:
                for path in split.reader.files:
                    digest.update(f"{path}\0{_size(path)}\n".encode())
        examples = sum(len(split) for split in splits)
        return f"{examples} examples, sha256 {digest.hexdigest()[:16]}"

    def summary(self):
        """Describe the splits in a JSON-serializable dict.

        Returns:
            A dict with the data set name, source, image shape, number of
            classes, their names and the number of examples of each split.
        """
        return {
            "dataset": self.dataset,
            "source": self.source,
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "train_examples": len(self.train),
            "validation_examples": len(self.validation),
            "test_examples": len(self.test),
        }


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return "missing"


def default_validation_examples(train_size):
    """The validation split's size when none is given: 5000, or a twelfth of
    the `train_size` training images when that is smaller (at least 1).

    Usage: `default_validation_examples(60000)` is 5000, `(1437)` is 119.
    """
    return max(1, min(MAX_DEFAULT_VALIDATION_EXAMPLES, train_size // DEFAULT_VALIDATION_SHARE))


def make_splits(found, validation_examples, train_examples):
    """Hold out the validation split (unless the source has one) and
    assemble a `DataSplits`.

    Arguments:
        found: What the source read (a `kd_tf.data.sources.SourceData`).
        validation_examples: Number of examples at the end of `found.train`
            that form the validation split; None: `default_validation_examples`.
            None when the source has a validation split of its own (a
            `directory` tree's validation folder), all of whose training
            examples are kept.
        train_examples: Maximum number of training examples, or `None`.

    Returns:
        A `DataSplits`.

    Raises:
        UserError: If no training example would be left, or the train and
            test images differ in shape.
    """
    train, validation, test = found.train, found.validation, found.test
    if validation is None:
        train, validation = _held_out(train, validation_examples)
    if train_examples is not None:
        train = train.subset(0, min(len(train), train_examples))
    image_shape, test_shape = train.image_shape, test.image_shape
    if test_shape != image_shape:
        raise UserError(
            f"train images have shape {image_shape} but test images "
            f"{test_shape}: pass a data set whose splits have one image shape"
        )
    return DataSplits(
        dataset=found.dataset,
        source=found.source,
        train=train,
        validation=validation,
        test=test,
        class_names=tuple(found.class_names),
        image_shape=image_shape,
    )


def _held_out(train, validation_examples):
    """`(train, validation)`: the last `validation_examples` examples of
    `train` (None: `default_validation_examples`) held out."""
    if validation_examples is None:
        validation_examples = default_validation_examples(len(train))
    if validation_examples >= len(train):
        raise ConfigError(
            ("validation_examples",),
            f"{{0}}={validation_examples} leaves no training "
            f"examples out of {len(train)}: pass a value below {len(train)}",
        )
    cut = len(train) - validation_examples
    return train.subset(0, cut), train.subset(cut, len(train))
