"""kd_tf.data.sources: every source behind one interface names its classes
(generated trees and records, the packaged MNIST copy; fast)."""

import os
import tempfile

import numpy as np
import tensorflow as tf

from kd_tf import command_line, data
from kd_tf.data import directory, sources, tfrecord
from kd_tf.errors import ConfigError


def _image(value):
    return tf.io.encode_png(np.full((4, 4, 1), value, np.uint8)).numpy()


def _tree(root, names, per_class=5):
    """`root/<name>/N.png` for each of `names`, the class's images all of one grey."""
    for index, name in enumerate(names):
        os.makedirs(os.path.join(root, name))
        for k in range(per_class):
            with open(os.path.join(root, name, f"{k}.png"), "wb") as f:
                f.write(_image(10 * index))
    return root


def _records(root, labels_file=None, labels=(0, 1, 2)):
    """train and test records of `labels` (each 4 times), and `labels.txt`
    holding `labels_file` when given."""
    os.makedirs(root)
    for split in ("train", "test"):
        with tf.io.TFRecordWriter(os.path.join(root, f"{split}.tfrecord")) as writer:
            for label in labels * 4:
                writer.write(tfrecord.example(_image(20 * label), label))
    if labels_file is not None:
        with open(os.path.join(root, "labels.txt"), "w", encoding="utf-8") as f:
            f.write(labels_file)
    return root


def _refusal(**kwargs):
    with tf.test.TestCase().assertRaises(ConfigError) as caught:
        data.load_splits(validation_examples=1, **kwargs)
    return command_line.describe(caught.exception)


class SourcesTest(tf.test.TestCase):
    def test_every_source_is_in_the_registry_and_says_what_it_reads(self):
        # The registry holds exactly the names `--data_source` offers (`kd_tf.choices`).
        self.assertEqual(tuple(sources.SOURCES), data.DATA_SOURCES)
        options = sources.SourceOptions(data_dir="photos", idx_dir="digits")
        for name in data.DATA_SOURCES:
            source = sources.source_for(name, options)
            self.assertEqual(source.name, name)
            self.assertIsInstance(source.reads(), str)
        self.assertIn("photos", sources.source_for("directory", options).reads())

    def test_the_packaged_digits_are_named_0_to_9(self):
        splits = data.load_splits("mnist", "packaged", train_examples=10)
        self.assertEqual(splits.class_names, tuple("0123456789"))

    def test_folders_name_their_classes_integers_in_numeric_order(self):
        root = tempfile.mkdtemp()
        named = data.load_splits(source="directory", data_dir=_tree(f"{root}/named", ["dog", "Cat", "bird"]),
                                 validation_examples=1)
        self.assertEqual(named.class_names, ("Cat", "bird", "dog"))
        numbers = [str(n) for n in range(11)]
        numbered = data.load_splits(source="directory", data_dir=_tree(f"{root}/numbered", numbers),
                                    validation_examples=1)
        self.assertEqual(numbered.class_names, tuple(numbers))
        # Folder 2's images (grey 20) have label 2, not 3 as in string order.
        self.assertAllEqual(np.unique(numbered.test.images[numbered.test.labels == 2]), [20])
        mixed = sorted(["10", "2", "b", "A"], key=directory.class_order)
        self.assertEqual(mixed, ["2", "10", "A", "b"])

    def test_records_are_named_by_their_labels_file_else_by_their_labels(self):
        root = tempfile.mkdtemp()
        named = data.load_splits(source="tfrecord", data_dir=_records(f"{root}/named", "cat\ndog\nbird\n"),
                                 validation_examples=1)
        self.assertEqual(named.class_names, ("cat", "dog", "bird"))
        with self.assertLogs("absl", "INFO") as logged:
            unnamed = data.load_splits(source="tfrecord", data_dir=_records(f"{root}/unnamed"),
                                       validation_examples=1)
        self.assertEqual(unnamed.class_names, ("0", "1", "2"))
        self.assertIn("has no labels.txt: the classes are named by their labels, 0 to 2",
                      "\n".join(logged.output))
        more = data.load_splits(source="tfrecord", data_dir=_records(f"{root}/more", "a\nb\nc\nd"),
                                validation_examples=1)
        self.assertEqual((more.class_names, more.num_classes), (("a", "b", "c", "d"), 4))

    def test_bad_names_are_refused_in_one_line(self):
        root = tempfile.mkdtemp()
        cases = {
            "few": ("a\nb\n", "names 2 classes but the records hold labels up to 2"),
            "blank": ("a\n\nc\n", "names a class '': a class name is one line of text"),
            "twice": ("a\nb\na\n", "names the class 'a' twice"),
        }
        for name, (labels_file, message) in cases.items():
            with self.subTest(name):
                refusal = _refusal(source="tfrecord", data_dir=_records(f"{root}/{name}", labels_file))
                self.assertIn(message, refusal)
                self.assertIn("labels.txt", refusal)
                self.assertNotIn("\n", refusal)
        tree = _tree(f"{root}/tree", ["a", "two\nlines"])
        self.assertIn("names a class 'two\\nlines'", _refusal(source="directory", data_dir=tree))
