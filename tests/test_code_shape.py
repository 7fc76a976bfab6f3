"""The code base's shape limits: the command line is the only layer that
knows absl flags, and modules and functions stay short enough to read.

Measured with Python's `ast` on every module under `kd_tf/`: a module's
length is its line count, a function's is from its `def` line to its last
line, docstring included.
"""

import ast
import os
import pathlib

import tensorflow as tf

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "kd_tf"
# The command-line layer: the only modules that may import absl.flags.
COMMAND_LINE = {"main.py", "command_line.py"}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def _imports_absl_flags(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "absl" and any(
            alias.name == "flags" for alias in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "absl.flags":
            return True
        if isinstance(node, ast.Import) and any(a.name == "absl.flags" for a in node.names):
            return True
    return False


def long_functions(tree, limit):
    """`(name, lines)` of every function in `tree` longer than `limit` lines."""
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > limit
    ]


class CodeShapeTest(tf.test.TestCase):
    def test_only_the_command_line_imports_absl_flags(self):
        offenders = [
            os.path.relpath(path, PACKAGE)
            for path in _modules()
            if path.name not in COMMAND_LINE and _imports_absl_flags(ast.parse(path.read_text()))
        ]
        self.assertEqual(offenders, [])

    def test_modules_and_functions_are_short(self):
        too_long = {}
        for path in _modules():
            text = path.read_text()
            name = os.path.relpath(path, PACKAGE)
            if len(text.splitlines()) > MAX_MODULE_LINES:
                too_long[name] = len(text.splitlines())
            for function, lines in long_functions(ast.parse(text), MAX_FUNCTION_LINES):
                too_long[f"{name}:{function}"] = lines
        self.assertEqual(too_long, {})

    def test_the_checks_see_what_they_guard(self):
        planted = ast.parse("from absl import flags\ndef f():\n" + "    x = 1\n" * 70)
        self.assertTrue(_imports_absl_flags(planted))
        self.assertEqual(long_functions(planted, MAX_FUNCTION_LINES), [("f", 71)])


if __name__ == "__main__":
    tf.test.main()
