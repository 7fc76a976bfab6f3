"""Streamed splits and the training stream over them (issue 12's streaming).

Real MNIST images written as a class-folder tree and as TFRecord files, read
in memory and streamed (`--data_memory_mb=0`), with an untrained seeded
teacher (the cached logits must be what it predicts, whatever it predicts):

- a streamed image-folder split yields exactly the batches, views and logits
  of the same split held in memory;
- a TFRecord pass visits every example once, in an order drawn from the
  seed alone, each image with its own label and logits (joined by index);
- K fixed views: K passes show each example in each view once, and view k of
  example i is the same image in the teacher's pass and in training;
- logits cached on disk equal logits cached in memory;
- a TFDS data set (mock data) streamed holds what memory holds, and one of
  another size and in colour is resized;
- the stream is a function of the seed: two iterators, a resumed run
  (`skip`) and two keras-tuner trials see the same batches;
- a streamed file removed during a run ends it with one line naming the
  file, and the backup resumes once the file is back.
"""

import contextlib
import io
import os
import shutil
from unittest import mock

import helpers
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from kd_tf import backup, data, export, logits_cache, main, models, pipelines, teacher_adapter
from kd_tf.data import directory, download_probe, scan, streaming, tfrecord

TRAIN, TEST = 600, 100
BATCH = 50
VIEWS = 3


def _write_records(root, images, labels, split, files):
    for number, part in enumerate(np.array_split(np.arange(len(labels)), files)):
        with tf.io.TFRecordWriter(os.path.join(root, f"{split}-{number:05d}.tfrecord")) as out:
            for i in part:
                out.write(tfrecord.example(tf.io.encode_png(images[i]).numpy(), labels[i]))


@pytest.fixture(scope="class")
def mnist_files(request, class_root):
    """`cls.tree`, `cls.records`: TRAIN + TEST real MNIST images as PNG class
    folders and as TFRecords (3 train files); `cls.adapter`: an untrained
    seeded `compact_cnn` teacher."""
    cls = request.cls
    train, test = data.read_packaged_mnist()
    cls.tree, cls.records = os.path.join(class_root, "tree"), os.path.join(class_root, "rec")
    os.makedirs(cls.records)
    for name, split, count, files in (("train", train, TRAIN, 3), ("test", test, TEST, 1)):
        helpers.write_image_tree(cls.tree, name, split.images[:count], split.labels[:count])
        _write_records(cls.records, split.images[:count], split.labels[:count], name, files)
    keras.utils.set_random_seed(0)
    model = models.build_model("compact_cnn", (28, 28, 1), 10)
    teacher_dir = os.path.join(class_root, "teacher")
    export.export_model(model, teacher_dir, check_images=train.images[:8])
    served = export.load_serving_model(teacher_dir, float_input=True)
    cls.adapter = teacher_adapter.TeacherAdapter(served, (28, 28, 1), "0-255", "logits")


def _load(source, directory, memory_mb=1024):
    return data.load_splits(
        source=source, data_dir=directory, validation_examples=100, memory_mb=memory_mb
    )


def _batches(dataset, count):
    """`(images, logits, labels)` of the first `count` batches of a new iterator."""
    parts = list(dataset.take(count).as_numpy_iterator())
    return (
        np.concatenate([part[0][0] for part in parts]),
        np.concatenate([part[0][1] for part in parts]),
        np.concatenate([part[1] for part in parts]),
    )


def _positions(images, reference):
    """Where each of `images` is in `reference` (uint8 arrays)."""
    where = {image.tobytes(): i for i, image in enumerate(reference)}
    return np.array([where[image.tobytes()] for image in images])


@pytest.mark.slow
@pytest.mark.usefixtures("mnist_files")
class StreamedSplitTest(tf.test.TestCase):
    def stream(self, split, views=VIEWS, seed=3, path=None):
        table = logits_cache.LogitsTable.compute(
            self.adapter.logits, 10, split, num_views=views, seed=seed, batch_size=128, path=path
        )
        return pipelines.training_dataset(split, BATCH, seed=seed, views=views, logits=table)

    def test_a_streamed_folder_split_yields_what_memory_holds(self):
        held = _load("directory", self.tree)
        # Files larger than the budget: the scan holds no decoded image at all.
        with mock.patch.object(scan, "_add", wraps=scan._add) as added:
            streamed = _load("directory", self.tree, 0)
        self.assertLen(added.call_args_list, TRAIN + TEST)
        self.assertEqual({call.args[1].size for call in added.call_args_list}, {0})
        self.assertIsInstance(held.train, data.Split)
        self.assertIsInstance(streamed.train, data.StreamedSplit)
        self.assertEqual(held.summary(), streamed.summary())
        self.assertEqual(held.train.background, streamed.train.background)
        # Three passes with views: the same images, views, logits and labels.
        for one, two in zip(_batches(self.stream(held.train), 30), _batches(self.stream(streamed.train), 30)):
            self.assertAllEqual(one, two)
        for name in ("validation", "test"):
            held_split, streamed_split = getattr(held, name), getattr(streamed, name)
            self.assertAllEqual(held_split.head(1000), streamed_split.head(1000))
            self.assertAllEqual(held_split.take([7, 2]), streamed_split.take([7, 2]))

    def test_a_tfrecord_pass_visits_every_example_once_with_its_logits(self):
        held = _load("tfrecord", self.records)
        with mock.patch.object(streaming, "SHUFFLE_WINDOW", 128):
            streamed = _load("tfrecord", self.records, 0)
            self.assertIsInstance(streamed.train, data.StreamedSplit)
            images, logits, labels = _batches(self.stream(streamed.train, views=0), 30)
            stream = self.stream(streamed.train, views=0)
            again = _batches(stream, 30)
            resumed = _batches(stream.skip(10), 20)
            other_seed = _batches(self.stream(streamed.train, views=0, seed=4), 30)
        positions = _positions(images, held.train.images)
        table = self.adapter.predict_logits(held.train.images)
        self.assertAllEqual(labels, held.train.labels[positions])
        self.assertAllClose(logits, table[positions], atol=1e-6)
        passes = positions.reshape(3, len(held.train))
        for one_pass in passes:
            self.assertAllEqual(np.sort(one_pass), np.arange(len(held.train)))
            # Within a file too (the first file holds examples 0 to 199).
            in_first_file = one_pass[one_pass < 200]
            self.assertNotAllEqual(in_first_file, np.sort(in_first_file))
        self.assertNotAllEqual(passes[0], passes[1])
        for one, two, three in zip((images, logits, labels), again, resumed):
            self.assertAllEqual(one, two)
            self.assertAllEqual(one[10 * BATCH :], three)
        self.assertNotAllEqual(other_seed[0], images)
        self.assertAllEqual(streamed.validation.head(1000), held.validation.images)

    def test_k_passes_show_each_view_once_as_the_teacher_saw_it(self):
        split = _load("directory", self.tree).train
        images, logits, _ = _batches(self.stream(split), VIEWS * len(split) // BATCH)
        originals = split.images
        seen = []
        for image, logit in zip(images, logits):
            matches = [
                (i, view)
                for view in range(VIEWS)
                for i in np.flatnonzero(np.all(self.views[view] == image, axis=(1, 2, 3)))
            ]
            self.assertNotEmpty(matches)
            seen.append(matches[0])
            i, view = matches[0]
            self.assertAllClose(logit, self.view_logits[view][i], atol=1e-6)
        self.assertLen(set(seen), VIEWS * len(split))
        self.assertAllEqual(self.views[0], originals)
        self.assertNotAllEqual(self.views[1], originals)

    def setUp(self):
        super().setUp()
        if not hasattr(type(self), "views"):
            split = _load("directory", self.tree).train
            batches = list(pipelines.views_in_order(split, VIEWS, 3, 128).as_numpy_iterator())
            type(self).views = [
                np.concatenate([images for views, _, images in batches if views[0] == view])
                for view in range(VIEWS)
            ]
            type(self).view_logits = [
                self.adapter.predict_logits(views, batch_size=128) for views in type(self).views
            ]

    def test_logits_on_disk_equal_logits_in_memory(self):
        split = _load("directory", self.tree, 0).train
        in_memory = logits_cache.LogitsTable.compute(
            self.adapter.logits, 10, split, num_views=VIEWS, seed=3
        )
        on_disk = logits_cache.LogitsTable.compute(
            self.adapter.logits, 10, split, num_views=VIEWS, seed=3,
            path=os.path.join(self.get_temp_dir(), "train.npy"),
        )
        self.assertIsInstance(on_disk.array, np.memmap)
        self.assertAllEqual(in_memory.array, on_disk.array)
        for view in range(VIEWS):
            self.assertAllClose(
                in_memory.array[:, view],
                self.adapter.predict_logits(self.views[view], batch_size=128),
                atol=1e-6,
            )
        # Both tables come from the same teacher batches, hence the same
        # kernels: their streams are bitwise equal (a table computed in other
        # batches may differ in the last bits, as oneDNN blocks them otherwise).
        streams = [
            pipelines.training_dataset(split, BATCH, seed=3, views=VIEWS, logits=table)
            for table in (on_disk, in_memory)
        ]
        for one, two in zip(*(_batches(stream, 20) for stream in streams)):
            self.assertAllEqual(one, two)

    def test_two_trials_on_one_stream_train_alike(self):
        """keras-tuner fits every trial on the same dataset object."""
        stream = self.stream(_load("directory", self.tree, 0).train).map(
            lambda features, labels: (features[0], labels)
        )
        histories = []
        for _ in range(2):
            keras.utils.set_random_seed(0)
            model = models.build_model("seed_mlp", (28, 28, 1), 10)
            model.compile(
                optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            )
            histories.append(model.fit(stream, epochs=2, steps_per_epoch=5, verbose=0).history)
        self.assertEqual(histories[0]["loss"], histories[1]["loss"])


class TfdsStreamTest(tf.test.TestCase):
    """A TFDS data set (`tfds.testing.mock_data`) streamed: the same examples
    as in memory, every one once a pass; another size and colour resized."""

    def setUp(self):
        super().setUp()
        patcher = mock.patch.object(download_probe, "_reachable", return_value=True)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.enterContext(tfds.testing.mock_data(num_examples=300))

    def load(self, name, **kwargs):
        return data.load_splits(
            name, "tfds", tfds_data_dir=self.get_temp_dir(), validation_examples=50, **kwargs
        )

    def test_a_streamed_tfds_split_holds_what_memory_holds(self):
        held, streamed = self.load("mnist"), self.load("mnist", memory_mb=0)
        self.assertIsInstance(streamed.train, data.StreamedSplit)
        self.assertEqual(held.summary(), streamed.summary())
        self.assertAllEqual(streamed.train.head(300), held.train.images)
        with mock.patch.object(streaming, "SHUFFLE_WINDOW", 64):
            batches = pipelines.training_dataset(streamed.train, 50, seed=1).take(10)
            parts = list(batches.as_numpy_iterator())
        positions = _positions(np.concatenate([p[0] for p in parts]), held.train.images)
        self.assertAllEqual(np.concatenate([p[1] for p in parts]), held.train.labels[positions])
        for one_pass in positions.reshape(2, 250):
            self.assertAllEqual(np.sort(one_pass), np.arange(250))
            self.assertNotAllEqual(one_pass[:64], np.sort(one_pass[:64]))

    def test_colour_of_another_size_is_resized(self):
        splits = self.load("cifar10", image_size=(8, 8), memory_mb=0)
        self.assertEqual(splits.image_shape, (8, 8, 3))
        self.assertEqual(splits.train.head(2).shape, (2, 8, 8, 3))
        self.assertEqual(splits.num_classes, 10)


class FileRemovedDuringARunTest(tf.test.TestCase):
    def run_command(self, argv):
        """`(status, kd_tf lines on stderr)` of an in-process run; no traceback."""
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = main.run_command(argv)
        self.assertNotIn("Traceback", stderr.getvalue())
        return status, helpers.kd_tf_lines(stderr.getvalue())

    def test_the_file_is_named_and_the_backup_resumes_once_it_is_back(self):
        root = os.path.join(self.get_temp_dir(), "removed")
        tree = helpers.write_mnist_tree(os.path.join(root, "tree"), 200, 100)
        backup_dir = os.path.join(root, "backup")
        argv = helpers.slice_argv(
            root, "--stage=scratch", "--data_source=directory", f"--data_dir={tree}",
            "--data_memory_mb=0", "--epochs=2", "--train_examples=128",
            "--validation_examples=64", f"--backup_dir={backup_dir}", f"--export_dir={root}/1",
        )
        # The last training file is the validation split's (read every epoch).
        removed = directory.listed_files(tree).train[-1][0]
        kept = os.path.join(root, "kept.png")
        back_up = backup.TrainingBackup.on_epoch_end

        def back_up_then_remove(saver, epoch, logs=None):
            back_up(saver, epoch, logs)
            if epoch == 0:
                shutil.move(removed, kept)

        with mock.patch.object(backup.TrainingBackup, "on_epoch_end", back_up_then_remove):
            status, lines = self.run_command(argv)
        self.assertEqual(status, main.EXIT_USER_ERROR, lines)
        self.assertEqual(
            lines,
            [f"kd_tf: error: cannot read {removed} any more (No such file or directory): the "
             "data set changed during the run; put the file back and rerun to resume after "
             f"epoch 1 from {backup_dir}/scratch"],
        )
        shutil.move(kept, removed)
        status, lines = self.run_command(argv)
        self.assertEqual(status, 0, lines)
        self.assertEqual(helpers.read_report(f"{root}/1")["resumed_from_epoch"], 1)
