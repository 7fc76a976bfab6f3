"""Tests for kd_tf.atomic: writing one file atomically."""

import os
import tempfile

import tensorflow as tf

from kd_tf import atomic


def _write_text(text):
    """A `write` callable for `atomic.write_file` that writes `text`."""

    def write(temporary):
        with open(temporary, "w") as f:
            f.write(text)

    return write


class WriteFileTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp(dir=self.get_temp_dir())
        self.path = os.path.join(self.directory, "state.json")

    def _read(self):
        with open(self.path) as f:
            return f.read()

    def test_content_lands_at_the_path(self):
        atomic.write_file(self.path, _write_text("first"))
        self.assertEqual(self._read(), "first")
        atomic.write_file(self.path, _write_text("second"))
        self.assertEqual(self._read(), "second")
        self.assertEqual(os.listdir(self.directory), ["state.json"])

    def test_write_goes_to_a_hidden_sibling(self):
        seen = []

        def write(temporary):
            seen.append(temporary)
            _write_text("new")(temporary)
            self.assertFalse(os.path.exists(self.path), "nothing at the path before the rename")

        atomic.write_file(self.path, write)
        (temporary,) = seen
        self.assertEqual(os.path.dirname(temporary), self.directory)
        self.assertStartsWith(os.path.basename(temporary), ".state.json.tmp-")
        self.assertEqual(self._read(), "new")

    def test_failure_keeps_the_old_content_and_leaves_no_temporary_file(self):
        atomic.write_file(self.path, _write_text("old"))
        for error in (OSError("disk full"), KeyboardInterrupt()):

            def write_then_fail(temporary, error=error):
                _write_text("partial")(temporary)
                raise error

            with self.subTest(error=type(error).__name__):
                with self.assertRaises(type(error)):
                    atomic.write_file(self.path, write_then_fail)
                self.assertEqual(self._read(), "old")
                self.assertEqual(os.listdir(self.directory), ["state.json"])

    def test_failure_before_anything_is_written(self):
        def write(temporary):
            raise ValueError("no content")

        with self.assertRaisesRegex(ValueError, "no content"):
            atomic.write_file(self.path, write)
        self.assertEqual(os.listdir(self.directory), [])


if __name__ == "__main__":
    tf.test.main()
