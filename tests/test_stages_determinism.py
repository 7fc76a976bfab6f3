"""End to end: the same flags give bitwise-identical weights (docs/exports-and-serving.md,
Reproducibility), twice in one process and in two separate
`python -m kd_tf.main` processes, in float32 and in bfloat16."""

import os

import helpers
import numpy as np
import pytest

# lenet_narrow (lenet_bn's layers at half the channels) has dropout and batch
# norm, and --augment draws distortions every step: every seeded random
# source takes part.
ARGV = ("--stage=teacher", "--model=lenet_narrow", "--augment", "--epochs=2", "--seed=3")


@pytest.mark.slow
@pytest.mark.usefixtures("class_root")
class SameSeedTest(helpers.CommandTestCase):
    def test_same_seed_gives_bitwise_identical_weights(self):
        exports = [os.path.join(self.root, "in_process", str(n)) for n in (1, 2)]
        for export_dir in exports:
            self.assertEqual(self.run_command(*ARGV, f"--export_dir={export_dir}")[0], 0)
        # In one process the loading order is stable, but Keras numbers the
        # seed generators' names (seed_generator_1): compared in order.
        first, second = (list(helpers.exported_variables(d).values()) for d in exports)
        self.assertGreater(len(first), 10)
        self.assertLen(second, len(first))
        for index, (a, b) in enumerate(zip(first, second)):
            self.assertTrue(np.array_equal(a, b), index)

    def test_two_processes_give_bitwise_identical_weights(self):
        # In float32 on every CPU (auto is bfloat16 on an AMX CPU, the next test's).
        self._two_processes("processes", helpers.FLOAT32)

    @helpers.requires_bfloat16
    def test_two_processes_in_bfloat16_give_bitwise_identical_weights(self):
        # Same seed, same precision, same machine (docs/precision-and-speed.md).
        exports = self._two_processes("bfloat16", "--precision=mixed_bfloat16")
        self.assertEqual(helpers.read_report(exports[0])["precision"], "mixed_bfloat16")

    def _two_processes(self, name, *extra):
        exports = [os.path.join(self.root, name, str(n)) for n in (1, 2)]
        results = helpers.run_kd_tf(
            *(
                helpers.slice_argv(
                    self.root, "--train_examples=256", *ARGV, *extra, f"--export_dir={d}"
                )
                for d in exports
            )
        )
        for status, _, stderr in results:
            self.assertEqual(status, 0, stderr[-3000:])
        # The checkpoint lists the variables in another order in each process:
        # compared by name.
        first, second = (helpers.exported_variables(d) for d in exports)
        self.assertGreater(len(first), 10)
        self.assertCountEqual(second, first)
        for name, value in first.items():
            self.assertTrue(np.array_equal(value, second[name]), name)
        return exports
