"""Palette BMPs (kd_tf/data/bmp.py) through `images.decode`, checked against
Pillow's decoder (a dependency of matplotlib) on files written by Pillow and
by a writer here for the depths and layouts Pillow does not write."""

import io
import os
import struct
import tempfile

import numpy as np
import PIL.Image
import tensorflow as tf

from kd_tf import inference, preprocessing
from kd_tf.data import directory, images


def _pillow_bmp(image):
    """The BMP bytes Pillow writes for `image` (a `PIL.Image`)."""
    buffer = io.BytesIO()
    image.save(buffer, "BMP")
    return buffer.getvalue()


def _written_bmp(indices, palette, bits, top_down=False, compression=0):
    """An uncompressed palette BMP of `indices` `[h, w]` (`bits` a pixel,
    `palette` `[entries, 3]` RGB), bottom row first unless `top_down`."""
    height, width = indices.shape
    per_byte = 8 // bits
    stride = (bits * width + 31) // 32 * 4
    padded = np.zeros((height, stride * per_byte), np.int64)
    padded[:, :width] = indices if top_down else indices[::-1]
    shifts = 8 - bits * np.arange(1, per_byte + 1)
    rows = (padded.reshape(height, stride, per_byte) << shifts).sum(-1).astype(np.uint8)
    colours = b"".join(bytes([b, g, r, 0]) for r, g, b in palette)
    offset = 14 + 40 + len(colours)
    info = struct.pack(
        "<IiiHHIIiiII", 40, width, -height if top_down else height, 1, bits, compression,
        rows.size, 2835, 2835, len(palette), 0,
    )
    file_header = struct.pack("<2sIHHI", b"BM", offset + rows.size, 0, 0, offset)
    return file_header + info + colours + rows.tobytes()


def _pillow_rgb(encoded):
    return np.asarray(PIL.Image.open(io.BytesIO(encoded)).convert("RGB"))


class PaletteBmpTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(0)

    def _files(self):
        """`{name: (bytes, expected RGB)}` of palette BMPs of odd widths (rows
        are padded): Pillow's files with Pillow's reading of them, and this
        file's with the palette's colours of their indices."""
        colour = self.rng.integers(0, 256, (5, 13, 3), dtype=np.uint8)
        written = {
            "1 bit (Pillow)": PIL.Image.fromarray(colour[..., 0] > 128).convert("1"),
            "8 bits, colour palette (Pillow)": PIL.Image.fromarray(colour).convert(
                "P", palette=PIL.Image.ADAPTIVE, colors=16
            ),
            "8 bits, grey (Pillow)": PIL.Image.fromarray(colour[..., 1]),
        }
        files = {name: (_pillow_bmp(image), np.asarray(image.convert("RGB")))
                 for name, image in written.items()}
        palette = self.rng.integers(0, 256, (11, 3), dtype=np.uint8)
        for name, shape, entries, bits, top_down in (
            ("4 bits, 11 colours", (7, 9), 11, 4, False),
            ("4 bits, top row first", (6, 3), 11, 4, True),
            ("2 bits", (3, 17), 4, 2, False),
            ("1 bit, 33 wide", (4, 33), 2, 1, False),
        ):
            indices = self.rng.integers(0, entries, shape)
            encoded = _written_bmp(indices, palette[:entries], bits, top_down)
            files[name] = (encoded, palette[indices])
        return files

    def test_the_writer_here_writes_what_pillow_reads(self):
        for name, (encoded, expected) in self._files().items():
            if "2 bits" not in name:  # Pillow reads no 2-bit BMP
                with self.subTest(name):
                    self.assertAllEqual(_pillow_rgb(encoded), expected)

    def test_palette_bmps_decode_to_their_colours(self):
        for name, (encoded, expected) in self._files().items():
            with self.subTest(name):
                self.assertAllEqual(images.decode(encoded), expected)
                in_graph = tf.data.Dataset.from_tensors(encoded).map(images.decode)
                self.assertAllEqual(next(iter(in_graph)), expected)
                grey = preprocessing.with_model_channels(images.decode(encoded), 1)
                self.assertEqual(grey.shape, (*expected.shape[:2], 1))

    def test_other_images_decode_as_before(self):
        colour = self.rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
        for encoded in (_pillow_bmp(PIL.Image.fromarray(colour)), tf.io.encode_png(colour)):
            self.assertAllEqual(images.decode(encoded), colour)

    def test_broken_palette_bmps_are_unreadable(self):
        indices, palette = self.rng.integers(0, 4, (4, 5)), self.rng.integers(0, 256, (4, 3))
        whole = _written_bmp(indices, palette, 4)
        broken = {
            "truncated": whole[:-3],
            "compressed": _written_bmp(indices, palette, 4, compression=2),
            "index beyond the palette": _written_bmp(indices, palette[:2], 4),
            "header only": whole[:54],
            "negative width": whole[:18] + struct.pack("<i", -5) + whole[22:],
            "zero height": whole[:22] + struct.pack("<i", 0) + whole[26:],
        }
        for name, encoded in broken.items():
            with self.subTest(name), self.assertRaises(images.UNREADABLE):
                images.decode(encoded)

    def test_a_tree_of_one_bit_bmps_is_read_as_grey(self):
        root = tempfile.mkdtemp(dir=self.get_temp_dir())
        pixels = self.rng.random((2, 5, 6, 4)) > 0.5
        for label, name in enumerate(("a", "b")):
            os.makedirs(os.path.join(root, name))
            for k in range(5):
                with open(os.path.join(root, name, f"{k}.bmp"), "wb") as f:
                    f.write(_pillow_bmp(PIL.Image.fromarray(pixels[label, k]).convert("1")))
        train, _, test, _ = directory.read_directory(root)
        self.assertEqual(train.images.shape, (8, 6, 4, 1))
        expected = np.where(pixels[:, 4], 255, 0).astype(np.uint8)[..., None]
        self.assertAllEqual(test.images, expected)
        path = os.path.join(root, "a", "0.bmp")
        loaded = inference.load_images([path], preprocessing.Preprocessing((6, 4, 1)))
        self.assertAllEqual(loaded[0], np.where(pixels[0, 0], 255, 0)[..., None])


if __name__ == "__main__":
    tf.test.main()
