"""kd_tf.data.images: image sizes read from headers, and what a scan reads of a
huge image (`kd_tf.data.scan`): an image of another size is refused without
being decoded, and an image that is decoded is never cast whole to float64
(one 62 KB 8000x8000 PNG among 16x16 images took the scan's peak memory to
2.5 GB, a 16384x16384 one to 8.6 GB); the scan keeps every image as decoded,
in order, through its batches."""

import io
import os
from unittest import mock

import numpy as np
import PIL.Image
import tensorflow as tf

from kd_tf.data import directory, images, scan
from kd_tf.errors import ConfigError


def _encoded(image, fmt, **options):
    """`image` (uint8 `[H, W, 3]`) encoded by Pillow as `fmt`."""
    out = io.BytesIO()
    PIL.Image.fromarray(image).save(out, fmt, **options)
    return out.getvalue()


def _gif_with_extensions(image):
    """An animated GIF (an application extension, then a graphic control
    extension before each frame) whose frames are `image` and its negative."""
    frames = [PIL.Image.fromarray(frame) for frame in (image, 255 - image)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return out.getvalue()


class HeaderSizeTest(tf.test.TestCase):
    def test_the_header_gives_the_decoded_size(self):
        image = np.random.default_rng(0).integers(0, 256, (7, 11, 3), np.uint8)
        top_down = bytearray(_encoded(image, "BMP"))
        top_down[22:26] = (-7).to_bytes(4, "little", signed=True)
        cases = {
            "png": _encoded(image, "PNG"),
            "grey png": _encoded(image[..., 0], "PNG"),
            "jpeg": _encoded(image, "JPEG"),
            "progressive jpeg": _encoded(image, "JPEG", progressive=True),
            "jpeg with exif": _encoded(image, "JPEG", exif=b"Exif\0\0" + bytes(3000)),
            "gif": _encoded(image, "GIF"),
            "animated gif": _gif_with_extensions(image),
            "bmp": _encoded(image, "BMP"),
            "top-down bmp": bytes(top_down),
        }
        for name, encoded in cases.items():
            with self.subTest(name):
                decoded = images.decode(encoded)
                self.assertEqual(images.header_size(encoded), tuple(decoded.shape[:2]))
                self.assertEqual(images.header_size(encoded), (7, 11))

    def test_other_bytes_have_no_header_size(self):
        png = _encoded(np.zeros((4, 4, 3), np.uint8), "PNG")
        for encoded in (b"", b"not an image", png[:20], b"\xff\xd8\xff", b"GIF89a"):
            with self.subTest(encoded=encoded[:8]):
                self.assertIsNone(images.header_size(encoded))


class HugeImageTest(tf.test.TestCase):
    def test_an_image_of_another_size_is_refused_without_being_decoded(self):
        tree = os.path.join(self.get_temp_dir(), "sizes")
        rng = np.random.default_rng(0)
        for name in ("a", "b"):
            os.makedirs(os.path.join(tree, name))
            for i in range(6):
                with open(os.path.join(tree, name, f"{i}.png"), "wb") as f:
                    f.write(_encoded(rng.integers(0, 256, (16, 16, 3), np.uint8), "PNG"))
        # The last image read claims 8000x8000 in its header; its pixels are
        # still 16x16, so decoding it fails.
        lying = directory.listed_files(tree).train[-1][0]
        with open(lying, "r+b") as f:
            f.seek(16)
            f.write((8000).to_bytes(4, "big") * 2)
        with self.assertRaisesRegex(
            ConfigError, r"the images have 2 sizes \(e.g. 16x16 and 8000x8000\)"
        ):
            directory.read_directory(tree)

    def test_only_the_frame_is_cast_to_float(self):
        facts = tf.function(images.image_facts).get_concrete_function(
            tf.TensorSpec([None, None, 3], tf.uint8)
        )
        casts = [op for op in facts.graph.get_operations() if op.type == "Cast"]
        self.assertNotEmpty(casts)
        for op in casts:
            self.assertLessEqual(op.inputs[0].shape.rank, 2, op.name)
        image = np.random.default_rng(0).integers(0, 256, (5, 6, 3), np.uint8)
        found = facts(tf.constant(image))
        self.assertAllClose(
            found["frame_sum"] / float(found["frame_count"]), images.frame_mean(image)
        )


class ScanBatchTest(tf.test.TestCase):
    def test_large_kept_images_come_a_few_at_a_time(self):
        self.assertEqual(scan.batch_size(True, (28, 28)), scan.SCAN_BATCH)
        self.assertEqual(scan.batch_size(True, (512, 512)), 16 * 2**20 // (3 * 512 * 512))
        self.assertEqual(scan.batch_size(True, (8000, 8000)), 1)
        self.assertEqual(scan.batch_size(True, None), 1)
        self.assertEqual(scan.batch_size(False, (8000, 8000)), scan.SCAN_BATCH)
        # The size a TFDS data set of one size declares; none for files.
        labels = tf.data.Dataset.range(2)
        for images_spec, size in (
            (tf.zeros([2, 28, 28, 1], tf.uint8), (28, 28)),
            (tf.constant(["a", "b"]), None),
        ):
            examples = tf.data.Dataset.zip(
                tf.data.Dataset.from_tensor_slices(images_spec), labels, labels
            )
            self.assertEqual(scan._static_size(examples), size)

    def test_a_scan_batches_by_the_size_of_its_first_image(self):
        tree = os.path.join(self.get_temp_dir(), "tree")
        for name in ("a", "b"):
            os.makedirs(os.path.join(tree, name))
            for i in range(3):
                with open(os.path.join(tree, name, f"{i}.png"), "wb") as f:
                    f.write(_encoded(np.zeros((600, 400, 3), np.uint8), "PNG"))
        with mock.patch.object(scan, "batch_size", wraps=scan.batch_size) as batch_size:
            directory.read_directory(tree, test_fraction=0.5)
        self.assertEqual(batch_size.call_args_list, [mock.call(True, (600, 400))] * 2)

    def test_images_of_several_sizes_come_back_in_order(self):
        """Decoded images (as TFDS gives them) of 3 sizes, across 2 of the
        scan's batches (ragged ones, as images of another size than the
        first's make them): each is kept as it was, with its label and facts."""
        rng = np.random.default_rng(0)
        shapes = [(5, 4, 3), (3, 6, 3), (5, 4, 3), (2, 2, 3)] * (scan.SCAN_BATCH // 2)
        originals = [rng.integers(0, 256, shape, np.uint8) for shape in shapes]
        examples = tf.data.Dataset.from_generator(
            lambda: ((image, label, label % 3) for label, image in enumerate(originals)),
            output_signature=(
                tf.TensorSpec([None, None, 3], tf.uint8),
                tf.TensorSpec([], tf.int64),
                tf.TensorSpec([], tf.int64),
            ),
        )
        with (
            mock.patch.object(scan, "batch_size", return_value=scan.SCAN_BATCH),
            mock.patch.object(scan.progress.Progress, "add", autospec=True) as shown,
        ):
            found = scan.scan_split(examples, images.as_rgb, None, 1, ConfigError)
        # The progress counts every image once.
        self.assertEqual(sum(call.args[1] for call in shown.call_args_list), len(originals))
        self.assertLen(found.images, len(originals))
        for kept, original in zip(found.images, originals):
            self.assertAllEqual(kept, original)
        self.assertEqual(found.labels, list(range(len(originals))))
        self.assertEqual(found.parts, [label % 3 for label in range(len(originals))])
        self.assertEqual(found.sizes, {(5, 4), (3, 6), (2, 2)})
        self.assertTrue(found.colour)
