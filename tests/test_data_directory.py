"""Image folders and TFRecord files as data sets (kd_tf/data/directory.py,
kd_tf/data/tfrecord.py), on scikit-learn's real 8x8 handwritten digits written
as PNG class folders and as TFRecords, and on generated images."""

import os
import tempfile

import numpy as np
import tensorflow as tf
from sklearn import datasets as sklearn_datasets

from kd_tf import command_line, data, main, reporting
from kd_tf.data import directory, images, tfrecord
from kd_tf.errors import UserError


def _write(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(tf.io.encode_png(image).numpy())


def _digits_tree(root):
    """scikit-learn's digits (values 0-16) as 8x8 grayscale PNGs, `root/<digit>/NNNN.png`;
    returns the images scaled to 0-255 and the labels, in file order."""
    digits = sklearn_datasets.load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
    for index, (image, label) in enumerate(zip(images, digits.target)):
        _write(os.path.join(root, str(label), f"{index:04d}.png"), image)
    return images, digits.target


def _examples(images, labels):
    """The (label, pixels) pairs of a split, as a sorted list: its content, in any order."""
    return sorted((int(label), image.tobytes()) for image, label in zip(images, labels))


class DirectoryTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()
        cls.digits = os.path.join(cls.root, "digits")
        cls.images, cls.labels = _digits_tree(cls.digits)

    def _refusal(self, *args, **kwargs):
        with self.assertRaises(UserError) as caught:
            directory.read_directory(*args, **kwargs)
        return command_line.describe(caught.exception)

    def test_digits_come_back_as_written(self):
        train, validation, test, classes = directory.read_directory(self.digits)
        self.assertIsNone(validation)
        self.assertEqual(classes, [str(d) for d in range(10)])
        self.assertEqual(len(train) + len(test), len(self.labels))
        expected = {}
        for index in np.argsort(self.labels, kind="stable"):
            expected.setdefault(int(self.labels[index]), []).append(index)
        order = [i for label in range(10) for i in expected[label]]
        held_out = [i for label in range(10) for k, i in enumerate(expected[label]) if (k + 1) % 5 == 0]
        kept = [i for i in order if i not in set(held_out)]
        self.assertEqual(_examples(train.images, train.labels), _examples(self.images[kept], self.labels[kept]))
        self.assertNotAllEqual(train.labels, self.labels[kept])  # shuffled, not in class order
        self.assertAllEqual(test.images, self.images[held_out])
        self.assertAllEqual(test.labels, self.labels[held_out])

    def test_train_and_test_folders(self):
        tree = os.path.join(self.root, "split")
        for split, count in (("train", 3), ("test", 2)):
            for label in ("cat", "dog"):
                for k in range(count):
                    _write(os.path.join(tree, split, label, f"{k}.png"),
                           np.full((5, 6, 1), 40 * k + (label == "dog"), np.uint8))
        train, validation, test, classes = directory.read_directory(tree)
        self.assertIsNone(validation)
        self.assertEqual(classes, ["cat", "dog"])
        self.assertAllEqual(sorted(train.labels), [0, 0, 0, 1, 1, 1])
        self.assertAllEqual(test.labels, [0, 0, 1, 1])
        self.assertAllEqual(test.images[:, 0, 0, 0], [0, 40, 1, 41])

    def test_a_validation_folder_is_the_validation_split(self):
        tree = os.path.join(self.root, "with_validation")
        for split, count in (("train", 4), ("validation", 2), ("test", 1)):
            for label in ("cat", "dog"):
                for k in range(count):
                    _write(os.path.join(tree, split, label, f"{k}.png"),
                           np.full((5, 6, 1), 40 * k + 10 * (split == "validation") + (label == "dog"), np.uint8))
        splits = data.load_splits(source="directory", data_dir=tree, train_examples=6)
        self.assertAllEqual(splits.validation.labels, [0, 0, 1, 1])
        self.assertAllEqual(splits.validation.images[:, 0, 0, 0], [10, 50, 11, 51])
        self.assertEqual(len(splits.train), 6)  # nothing held out: --train_examples alone cuts
        self.assertAllEqual(np.unique(splits.train.images[:, 0, 0, 0] % 10), [0, 1])
        with self.assertRaises(UserError) as caught:
            data.load_splits(source="directory", data_dir=tree, validation_examples=2)
        self.assertIn("has a validation folder", command_line.describe(caught.exception))
        os.rename(os.path.join(tree, "validation"), os.path.join(tree, "val"))
        self.assertEqual(len(data.load_splits(source="directory", data_dir=tree).train), 8)
        os.makedirs(os.path.join(tree, "validation"))
        self.assertIn("keep one validation folder", self._refusal(tree))

    def test_a_class_named_val_is_a_class(self):
        tree = os.path.join(self.root, "class_val")
        for label in ("train", "val", "validation"):
            for k in range(5):
                _write(os.path.join(tree, label, f"{k}.png"), np.full((4, 4, 1), k, np.uint8))
        splits = data.load_splits(source="directory", data_dir=tree, validation_examples=3)
        self.assertEqual(splits.num_classes, 3)
        self.assertEqual((len(splits.train), len(splits.validation), len(splits.test)), (9, 3, 3))

    def test_colour_makes_every_image_rgb(self):
        tree = os.path.join(self.root, "colour")
        _write(os.path.join(tree, "a", "grey.png"), np.full((4, 4, 1), 9, np.uint8))
        _write(os.path.join(tree, "b", "red.png"), np.tile(np.array([200, 0, 0], np.uint8), (4, 4, 1)))
        opaque = np.concatenate([np.full((4, 4, 3), 7, np.uint8), np.full((4, 4, 1), 255, np.uint8)], -1)
        _write(os.path.join(tree, "b", "alpha.png"), opaque)
        train, _, test, _ = directory.read_directory(tree, test_fraction=0.01)
        images = np.concatenate([train.images, test.images])
        self.assertEqual(images.shape, (3, 4, 4, 3))
        self.assertAllEqual(sorted(images[:, 0, 0].tolist()), [[7, 7, 7], [9, 9, 9], [200, 0, 0]])

    def test_mixed_sizes_need_image_size(self):
        tree = os.path.join(self.root, "sizes")
        _write(os.path.join(tree, "a", "small.png"), np.zeros((8, 8, 1), np.uint8))
        _write(os.path.join(tree, "b", "large.png"), np.full((16, 12, 1), 255, np.uint8))
        self.assertIn("pass --image_size=H,W", self._refusal(tree))
        train, _, test, _ = directory.read_directory(tree, image_size=(10, 10), test_fraction=0.01)
        self.assertEqual(np.concatenate([train.images, test.images]).shape, (2, 10, 10, 1))

    def test_bad_trees_are_refused_with_one_line(self):
        bad = os.path.join(self.root, "bad")
        os.makedirs(os.path.join(bad, "empty"))
        self.assertIn("is not a directory", self._refusal(os.path.join(self.root, "missing")))
        self.assertIn("holds only 'empty'", self._refusal(bad))
        _write(os.path.join(bad, "full", "a.png"), np.zeros((3, 3, 1), np.uint8))
        self.assertIn("holds no image", self._refusal(bad))
        os.rmdir(os.path.join(bad, "empty"))
        _write(os.path.join(bad, "other", "b.png"), np.zeros((3, 3, 1), np.uint8))
        with open(os.path.join(bad, "other", "c.png"), "wb") as f:
            f.write(b"not a png")
        message = self._refusal(bad)
        self.assertIn(f"cannot read {os.path.join(bad, 'other', 'c.png')}", message)
        self.assertIn("--data_dir", message)
        self.assertNotIn("\n", message)

    def test_split_folders_name_what_is_wrong(self):
        def tree(name, splits, classes=("cat", "dog")):
            root = os.path.join(self.root, "splits", name)
            for split in splits:
                for label in classes:
                    _write(os.path.join(root, split, label, "0.png"), np.zeros((3, 3, 1), np.uint8))
            return root

        test_only = tree("test_only", ("test",))
        self.assertEqual(
            self._refusal(test_only),
            f"--data_dir={test_only} has test/ but no train/: add {test_only}/train with one "
            "folder of images per class",
        )
        val_only = tree("val_only", ("val",))
        self.assertIn(
            f"has val/ but no train/ or test/: add {val_only}/train and {val_only}/test",
            self._refusal(val_only),
        )
        unseen = tree("unseen", ("train", "test", "validation"))
        tree("unseen", ("validation",), classes=("owl", "yak"))
        self.assertStartsWith(
            self._refusal(unseen),
            f"{unseen}/validation/owl, {unseen}/validation/yak: no such class in {unseen}/train",
        )
        lacking = tree("lacking", ("train", "test"))
        tree("lacking", ("val",), classes=("dog",))
        self.assertStartsWith(
            self._refusal(lacking),
            f"class 'cat' of {lacking}/train has no validation image: add {lacking}/val/cat",
        )
        os.makedirs(os.path.join(lacking, "val", "cat"))
        self.assertStartsWith(self._refusal(lacking), "class 'cat' of")

    def test_load_splits_names_the_data_set_after_its_folder(self):
        splits = data.load_splits(source="directory", data_dir=self.digits, validation_examples=100)
        self.assertEqual(splits.summary()["dataset"], "digits")
        self.assertEqual((splits.image_shape, splits.num_classes), ((8, 8, 1), 10))

    def test_background_of_the_digits_and_of_their_negatives(self):
        train = data.load_splits(source="directory", data_dir=self.digits, validation_examples=100).train
        self.assertBetween(images.frame_mean(train.images), 30, 45)  # 8x8 digits touch the frame
        self.assertEqual(images.background(train.images), "dark")
        self.assertEqual(images.background(255 - train.images), "light")
        self.assertEqual(images.background(np.full((8, 8, 1), 128, np.uint8)), "light")
        self.assertEqual(images.background(np.full((3, 8, 8, 3), 127, np.uint8)), "dark")

    def test_a_stage_trains_on_the_folders(self):
        export_dir = os.path.join(self.root, "scratch")
        status = main.run_command([
            "--stage=scratch", "--data_source=directory", f"--data_dir={self.digits}",
            "--validation_examples=200", "--epochs=8", f"--export_dir={export_dir}",
            f"--log_dir={self.root}/logs",
        ])
        self.assertEqual(status, 0)
        report = reporting.read_json(os.path.join(export_dir, "assets.extra", "report.json"))
        self.assertEqual(report["data"]["source"], "directory")
        self.assertEqual(report["data"]["background"], "dark")
        counts = np.bincount(self.labels)
        self.assertEqual(report["data"]["train_examples"], sum(counts - counts // 5) - 200)
        self.assertEqual(report["data"]["test_examples"], sum(counts // 5))
        self.assertGreater(report["test_accuracy"], 0.5)


class TFRecordTest(tf.test.TestCase):
    def _write(self, path, images, labels):
        with tf.io.TFRecordWriter(path, "GZIP" if path.endswith(".gz") else None) as writer:
            for image, label in zip(images, labels):
                writer.write(tfrecord.example(tf.io.encode_png(image).numpy(), label))

    def test_digits_come_back_as_written(self):
        digits = sklearn_datasets.load_digits()
        images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
        root = tempfile.mkdtemp()
        self._write(os.path.join(root, "train-00000-of-00002.tfrecord"), images[:700], digits.target[:700])
        self._write(os.path.join(root, "train-00001-of-00002.tfrecord.gz"), images[700:1500],
                    digits.target[700:1500])
        self._write(os.path.join(root, "test.tfrecord"), images[1500:], digits.target[1500:])
        splits = data.load_splits(source="tfrecord", data_dir=root, validation_examples=100)
        self.assertAllEqual(splits.train.images, images[:1400])
        self.assertAllEqual(splits.validation.labels, digits.target[1400:1500])
        self.assertAllEqual(splits.test.images, images[1500:])
        self.assertEqual(splits.num_classes, 10)

    def test_bad_records_are_refused_with_one_line(self):
        root = tempfile.mkdtemp()
        with self.assertRaises(UserError) as caught:
            tfrecord.read_tfrecords(root)
        self.assertIn("has no train*.tfrecord files", command_line.describe(caught.exception))
        with tf.io.TFRecordWriter(os.path.join(root, "train.tfrecord")) as writer:
            writer.write(b"not an example")
        self._write(os.path.join(root, "test.tfrecord"), np.zeros((1, 2, 2, 1), np.uint8), [0])
        with self.assertRaises(UserError) as caught:
            tfrecord.read_tfrecords(root)
        message = command_line.describe(caught.exception)
        self.assertIn("train.tfrecord holds a record that is not an image-classification", message)
        self.assertIn("--data_dir", message)


if __name__ == "__main__":
    tf.test.main()
