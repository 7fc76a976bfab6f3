"""End to end: the same flags give bitwise-identical weights (docs/exports-and-serving.md,
Reproducibility), twice in one process that has run other tests before, and
in a fresh `python -m kd_tf.main` process, in float32 and in bfloat16."""

import os
import re

import helpers
import numpy as np
import pytest

# lenet_narrow (lenet_bn's layers at half the channels) has dropout and batch
# norm, and --augment draws distortions every step: every seeded random
# source takes part.
ARGV = ("--stage=teacher", "--model=lenet_narrow", "--augment", "--epochs=2", "--seed=3")


def _by_name(export_dir):
    """The export's variables by name. Keras numbers the seed generators of
    one process (`seed_generator_1`, ...), so their number is left out: the
    other names (named layers) are the same in every process."""
    return {
        re.sub(r"seed_generator_\d+", "seed_generator", name): value
        for name, value in helpers.exported_variables(export_dir).items()
    }


@pytest.mark.slow
@pytest.mark.usefixtures("class_root")
class SameSeedTest(helpers.CommandTestCase):
    def test_float32_twice_in_this_process_and_in_a_fresh_one(self):
        # In float32 on every CPU (auto is bfloat16 on an AMX CPU, the next test's).
        self._assert_same_weights("float32", helpers.FLOAT32, runs_here=2)

    @helpers.requires_bfloat16
    def test_bfloat16_in_this_process_and_in_a_fresh_one(self):
        # Same seed, same precision, same machine (docs/precision-and-speed.md).
        exports = self._assert_same_weights("bfloat16", "--precision=mixed_bfloat16", runs_here=1)
        self.assertEqual(helpers.read_report(exports[0])["precision"], "mixed_bfloat16")

    def _assert_same_weights(self, name, *extra, runs_here):
        """Runs `ARGV` with `extra` in a fresh process and, meanwhile,
        `runs_here` times in this one; all their weights are bitwise equal."""
        argv = (*ARGV, *extra)
        fresh = os.path.join(self.root, name, "fresh")
        exports = [os.path.join(self.root, name, f"here{n}") for n in range(1, runs_here + 1)]
        with open(os.path.join(self.root, f"{name}.log"), "w+") as log:
            process = helpers.start_kd_tf(
                self.command_argv(*argv, f"--export_dir={fresh}"), stderr=log
            )
            try:
                for export_dir in exports:
                    self.assertEqual(self.run_command(*argv, f"--export_dir={export_dir}")[0], 0)
            finally:
                status = helpers.wait_all([process])
            log.seek(0)
            self.assertEqual(status, [0], log.read()[-3000:])
        expected = _by_name(fresh)
        self.assertGreater(len(expected), 10)
        for export_dir in exports:
            weights = _by_name(export_dir)
            self.assertCountEqual(weights, expected)
            for variable, value in expected.items():
                self.assertTrue(np.array_equal(weights[variable], value), (export_dir, variable))
        return [fresh, *exports]
