"""Palette BMPs (1, 2, 4 or 8 bits a pixel), which `tf.io.decode_image` misreads.

TensorFlow's BMP decoder refuses 1-, 2- and 4-bit BMPs, and reads an 8-bit
one's palette indices as grey levels, whatever its palette holds. `decode`
reads such a file itself, in TensorFlow ops (so it runs inside a `tf.data`
pipeline): the header (`BITMAPINFOHEADER` or a later version), the palette
(blue, green, red, unused: 4 bytes an entry), then the rows of indices, each
padded to a multiple of 4 bytes, bottom row first unless the height is
negative. Compressed (RLE) palette BMPs are refused as unreadable; BMPs of
16, 24 or 32 bits a pixel are TensorFlow's to decode.

Usage:

```python
image = tf.cond(bmp.is_palette_bmp(encoded), lambda: bmp.decode(encoded), ...)
```
"""

import tensorflow as tf

# The file header (14 bytes) and BITMAPINFOHEADER (40 bytes).
HEADER_BYTES = 54
_INFO_HEADER_BYTES = 40
_BI_RGB = 0
# The bits a pixel of a palette BMP.
PALETTE_BITS = (1, 2, 4, 8)


def _field(data, offset, size):
    """The unsigned little-endian integer of `size` bytes at `offset` of the uint8 `data`."""
    values = tf.cast(data[offset : offset + size], tf.int64)
    return tf.reduce_sum(values * tf.constant([256**i for i in range(size)], tf.int64))


def _signed(value):
    """A 32-bit field's unsigned `value` as two's complement."""
    return tf.where(value >= 2**31, value - 2**32, value)


def _header(encoded):
    """The first `HEADER_BYTES` of `encoded` (zero-padded) as uint8."""
    padded = tf.strings.join([encoded, tf.constant(b"\0" * HEADER_BYTES)])
    return tf.io.decode_raw(tf.strings.substr(padded, 0, HEADER_BYTES), tf.uint8)


def is_palette_bmp(encoded):
    """Whether the bytes `encoded` are a BMP with an info header and a palette
    (1, 2, 4 or 8 bits a pixel): the ones `decode` reads."""
    header = _header(encoded)
    signature = tf.logical_and(tf.equal(header[0], ord("B")), tf.equal(header[1], ord("M")))
    info = _field(header, 14, 4) >= _INFO_HEADER_BYTES
    return signature & info & _is_palette_depth(_field(header, 28, 2))


def _is_palette_depth(bits):
    return tf.reduce_any(tf.equal(bits, tf.constant(PALETTE_BITS, tf.int64)))


def decode(encoded):
    """A palette BMP's bytes (see `is_palette_bmp`) as a uint8 RGB tensor
    `[h, w, 3]`.

    Raises:
        tf.errors.InvalidArgumentError: the file is compressed, truncated,
            empty, or holds an index beyond its palette.
    """
    data = tf.io.decode_raw(encoded, tf.uint8)
    bits = _field(data, 28, 2)
    width, height = _signed(_field(data, 18, 4)), _signed(_field(data, 22, 4))
    # One Assert op of a string: the decoding graph stays small (each
    # `tf.debugging.assert_*` adds a conditional of its own).
    readable = tf.debugging.Assert(
        _is_palette_depth(bits)
        & tf.equal(_field(data, 30, 4), _BI_RGB)
        & (width > 0)
        & tf.not_equal(height, 0),
        ["a palette BMP that is compressed, or of another depth or size"],
    )
    with tf.control_dependencies([readable]):
        rows = _rows(data, bits, width, tf.abs(height))
    # Rows are stored bottom first unless the height is negative.
    stored = tf.range(tf.shape(rows, out_type=tf.int64)[0])
    rows = tf.gather(rows, tf.where(height > 0, stored[::-1], stored))
    return tf.gather(_palette(data, bits), _indices(rows, bits, width))


def _palette(data, bits):
    """The palette's colours, `[entries, 3]` RGB."""
    start = 14 + _field(data, 14, 4)
    entries = _field(data, 46, 4)
    entries = tf.where(entries == 0, 2**bits, entries)
    colours = tf.reshape(data[start : start + 4 * entries], [entries, 4])
    return tf.reverse(colours[:, :3], [1])


def _rows(data, bits, width, height):
    """The pixel rows as stored, `[height, bytes a row]` (a row is padded to 4 bytes)."""
    stride = (bits * width + 31) // 32 * 4
    start = _field(data, 10, 4)
    return tf.reshape(data[start : start + stride * height], [height, stride])


def _indices(rows, bits, width):
    """The palette index of every pixel, `[height, width]` int32: `8 / bits`
    a byte, the leftmost in the high bits."""
    shifts = tf.cast(8 - bits * tf.range(1, 8 // bits + 1, dtype=tf.int64), tf.uint8)
    mask = tf.cast(2**bits - 1, tf.uint8)
    indices = tf.bitwise.bitwise_and(tf.bitwise.right_shift(rows[:, :, None], shifts), mask)
    return tf.cast(tf.reshape(indices, [tf.shape(rows)[0], -1])[:, :width], tf.int32)
