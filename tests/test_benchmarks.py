"""The benchmarks' entry point is wired: `python -m benchmarks.run --smoke`
(`run.main`, in process) runs suites on a few hundred images for one epoch
(the script suites only start their scripts) and writes each suite's JSON with
the CPU it ran on and the load; it refuses unknown suites. Every suite is
smoke-run by `make bench-smoke`. Figures are not checked here: they are the
benchmarks'. The time-to-accuracy rule of `teacher_recipe` is checked on
made-up epochs, and its choice of recipes by name."""

import contextlib
import io
import os
from unittest import mock

import tensorflow as tf

from benchmarks import flag_sets, run, teacher_recipe
from kd_tf import reporting


# Suites cheap enough for the test suite (about 10 s together): the entry
# point, a measured suite and two script suites. `make bench-smoke` runs every
# suite so (about 150 s on a 2-core Xeon).
SMOKED = ("logits_pass", "digits", "methods")


class EntryPointTest(tf.test.TestCase):
    def test_suites_run_in_smoke_mode_and_write_their_results(self):
        out, results = self.get_temp_dir(), os.path.join(self.get_temp_dir(), "results")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            status = run.main(["--smoke", f"--out={out}", f"--results_dir={results}", *SMOKED])
        self.assertEqual(status, 0, printed.getvalue()[-3000:])
        self.assertCountEqual(os.listdir(results), [f"{name}.json" for name in SMOKED])
        for name in SMOKED:
            with self.subTest(suite=name):
                written = reporting.read_json(os.path.join(results, f"{name}.json"))
                self.assertEqual((written["suite"], written["smoke"]), (name, True))
                kinds = ("AMX", "AVX-512 BF16", "AVX-512", "AVX2", "older")
                self.assertIn(written["machine"]["cpu"]["kind"], kinds)
                self.assertLen(written["machine"]["load_average_before"], 3)
        passes = reporting.read_json(os.path.join(results, "logits_pass.json"))
        self.assertEqual(passes["images"], 512)
        self.assertGreater(passes["bare_images_per_second"], 0)

    def test_unknown_suites_are_refused(self):
        # In process: the entry point's parsing, with argparse's exit status.
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), self.assertRaises(SystemExit) as exited:
            run.main(["--smoke", "no_such_suite"])
        self.assertEqual(exited.exception.code, 2)
        self.assertIn("unknown: no_such_suite", stderr.getvalue())


class TimeToTargetTest(tf.test.TestCase):
    def test_seconds_up_to_the_first_epoch_at_the_target(self):
        epochs = [
            {"train_seconds": 10.0, "validation_seconds": 1.0, "test_accuracy": 0.990},
            {"train_seconds": 10.0, "validation_seconds": 1.0, "test_accuracy": 0.995},
            {"train_seconds": 10.0, "validation_seconds": 1.0, "test_accuracy": 0.993},
        ]
        self.assertEqual(teacher_recipe.seconds_to_target(epochs), 22.0)
        self.assertIsNone(teacher_recipe.seconds_to_target(epochs, target=0.996))


class RecipeSelectionTest(tf.test.TestCase):
    def test_the_named_recipes_run_beside_the_default(self):
        self.assertEqual(list(teacher_recipe.selected(())), list(teacher_recipe.RECIPES))
        self.assertEqual(
            list(teacher_recipe.selected(("lenet_bn_18",))),
            [teacher_recipe.DEFAULT, "lenet_bn_18"],
        )
        with self.assertRaisesRegex(SystemExit, r"unknown recipes \['lenet_bn_99'\]"):
            teacher_recipe.selected(("lenet_bn_99",))


class RecipeStudentsTest(tf.test.TestCase):
    def test_each_student_learns_from_its_recipes_teacher_of_its_own_seed(self):
        teachers = {
            name: [flag_sets.Run(seed, {}, 1.0, f"/runs/{name}/{seed}") for seed in (3, 5)]
            for name in ("old", "new")
        }
        calls = []

        def run_alternating(sets, *, seeds, out, extra):
            calls.append(seeds)
            return {name: [flag_sets.Run(seeds[0], {"argv": a}, 1.0, out)] for name, a in sets.items()}

        with mock.patch.object(flag_sets, "run_alternating", run_alternating):
            students = teacher_recipe.distil_students(teachers, out="/students")
        self.assertEqual(calls, [[3], [5]])
        for name in ("old", "new"):
            self.assertEqual(
                [(run.seed, run.report["argv"]) for run in students[name]],
                [
                    (seed, [*teacher_recipe.STUDENT, f"--teacher_dir=/runs/{name}/{seed}"])
                    for seed in (3, 5)
                ],
            )
