"""kd_tf.tuning without a search: best.cfg (the search itself runs end to end
in tests/test_stages_tune.py)."""

import os

import numpy as np
import tensorflow as tf

from kd_tf import command_line, tuning


class BestFlagfileTest(tf.test.TestCase):
    def test_best_cfg_takes_numpy_values(self):
        # Bayesian optimisation proposes numpy floats after its random start.
        path = os.path.join(self.get_temp_dir(), "best.cfg")
        best = {"trial": "06", "val_accuracy": 0.99, "temperature": np.float64(3.5)}
        tuning.write_best_flagfile({**best, "alpha": np.float64(0.25)}, path)
        config = command_line.parse(["--stage=student", f"--flagfile={path}"])
        self.assertEqual((config.distillation.temperature, config.distillation.alpha), (3.5, 0.25))


if __name__ == "__main__":
    tf.test.main()
