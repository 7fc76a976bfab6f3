"""Tests for kd_tf.atomic: writing one file atomically, and an output staged
while another run's output appears at its final path."""

import hashlib
import os
import shutil
import tempfile
from unittest import mock

import helpers
import tensorflow as tf

from kd_tf import atomic
from kd_tf.errors import UserError


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


class StagedRaceTest(tf.test.TestCase):
    """`atomic.staged` when something appears at the final path after the
    check before staging: another run's export, or a user's folder or file.
    It is refused, and kept as it was, with no staging debris."""

    def setUp(self):
        super().setUp()
        self.parent = tempfile.mkdtemp(dir=self.get_temp_dir())
        self.path = os.path.join(self.parent, "1")

    def _appear(self, name="saved_model.pb"):
        """Another run's export (or, with another `name`, a user's folder) at the path."""
        os.makedirs(self.path)
        _write_text("the other run's")(os.path.join(self.path, name))

    def _stage_ours(self, overwrite, appear=None):
        """Stages an export of ours; `appear()` runs once it is complete."""
        with atomic.staged(self.path, overwrite=overwrite) as staging:
            _write_text("ours")(os.path.join(staging, "saved_model.pb"))
            if appear is not None:
                appear()

    def _assert_kept(self, before):
        self.assertEqual(helpers.snapshot(self.path), before)
        self.assertEqual(os.listdir(self.parent), ["1"], "staging debris")

    def test_an_export_that_appears_while_staging_is_kept(self):
        with self.assertRaisesRegex(UserError, f"{self.path} already holds an export"):
            self._stage_ours(overwrite=False, appear=self._appear)
        self._assert_kept({"saved_model.pb": _sha256("the other run's")})

    def test_overwrite_does_not_replace_what_is_not_an_export(self):
        def a_file():
            _write_text("a user's file")(self.path)

        folder = {"notes.txt": _sha256("the other run's")}
        for name, appear, before in (
            ("folder", lambda: self._appear("notes.txt"), folder),
            ("file", a_file, None),
        ):
            with self.subTest(name):
                with self.assertRaisesRegex(
                    UserError, f"{self.path} is not an export .* will not replace it"
                ):
                    self._stage_ours(overwrite=True, appear=appear)
                if before is None:
                    with open(self.path) as f:
                        self.assertEqual(f.read(), "a user's file")
                    self.assertEqual(os.listdir(self.parent), ["1"], "staging debris")
                else:
                    self._assert_kept(before)
            _remove(self.path)

    def test_an_export_that_appears_after_the_last_check_is_kept(self):
        # The last check before the move is check_target's second call
        # without overwrite, is_output's first with it (the path is free up
        # front); an export appearing after it must stop the move itself.
        for overwrite, checked, call in ((False, "check_target", 2), (True, "is_output", 1)):
            with self.subTest(overwrite=overwrite):
                with (
                    self._appearing_after(checked, call),
                    self.assertRaisesRegex(UserError, f"{self.path} already holds an export"),
                ):
                    self._stage_ours(overwrite)
                self._assert_kept({"saved_model.pb": _sha256("the other run's")})
            _remove(self.path)

    def _appearing_after(self, name, call):
        """`atomic.<name>` patched so that another run's export appears at the
        path just after its `call`-th call returns."""
        original, calls = getattr(atomic, name), []

        def check_then_appear(*args, **kwargs):
            result = original(*args, **kwargs)
            calls.append(name)
            if len(calls) == call:
                self._appear()
            return result

        return mock.patch.object(atomic, name, side_effect=check_then_appear)


def _remove(path):
    """Removes the file or folder at `path`, if any."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


if __name__ == "__main__":
    tf.test.main()
