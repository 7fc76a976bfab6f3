"""`--stage=tune` on a small slice of real MNIST: the search, its objective,
resuming, and best.cfg driving the student stage."""

import glob
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from absl import flags
from keras_tuner.src.engine import trial as trial_module

from kd_tf import command_line, distribution, reporting, stages, training, tuning
from kd_tf.errors import UserError
from kd_tf.stages import student


def _trial_files(tune_dir):
    """`{trial_id: modification time of its trial.json}`."""
    pattern = os.path.join(tune_dir, tuning.PROJECT_NAME, "trial_*", "trial.json")
    return {
        os.path.basename(os.path.dirname(path))[len("trial_") :]: os.stat(path).st_mtime_ns
        for path in glob.glob(pattern)
    }


class TuningTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()
        cls.teacher = stages.run(cls.settings("--stage=teacher", "--model=seed_cnn", "--epochs=1"))
        cls.tune_dir = os.path.join(cls.root, "tune")
        cls.report = stages.run(cls.tune_settings(cls.tune_dir))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root)
        super().tearDownClass()

    @classmethod
    def settings(cls, *argv):
        return command_line.parse(
            [
                "--epochs=2",
                "--train_examples=384",
                "--validation_examples=256",
                "--batch_size=64",
                f"--saved_models_dir={cls.root}/saved_models",
                f"--log_dir={cls.root}/logs",
                *argv,
            ]
        )

    @classmethod
    def tune_settings(cls, tune_dir, *argv):
        return cls.settings(
            "--stage=tune",
            f"--teacher_dir={cls.teacher['export_dir']}",
            f"--tune_dir={tune_dir}",
            "--max_trials=2",
            *argv,
        )

    def _copy_search(self, name):
        copy = os.path.join(self.root, name)
        shutil.copytree(self.tune_dir, copy)
        return copy

    def test_trials_differ_in_temperature(self):
        trials = self.report["trials"]
        self.assertLen(trials, 2)
        for trial in trials:
            self.assertEqual(trial["status"], "COMPLETED")
            self.assertBetween(trial["temperature"], 1.0, 20.0)
            self.assertBetween(trial["alpha"], 0.1, 0.9)
        self.assertNotAlmostEqual(trials[0]["temperature"], trials[1]["temperature"], places=3)
        self.assertGreaterEqual(trials[0]["val_accuracy"], trials[1]["val_accuracy"])
        self.assertEqual(self.report["best"], trials[0])
        on_disk = reporting.read_json(os.path.join(self.tune_dir, "report.json"))
        self.assertEqual(on_disk["trials"], trials)
        self.assertEqual(on_disk["teacher_dir"], self.teacher["export_dir"])
        self.assertEqual(on_disk["teacher_logits"], "cached")
        self.assertEqual(on_disk["objective"], "val_accuracy")
        self.assertTrue(os.path.isfile(os.path.join(self.tune_dir, "temperature.png")))

    def test_objective_is_validation_accuracy(self):
        config = self.tune_settings(self.tune_dir)
        strategy = distribution.strategy_for(config.runtime, config.optimization.batch_size)
        policy = self.report["precision"]
        with student.prepare_distillation(config, strategy, policy) as inputs:
            self._check_trials_from_their_checkpoints(config, inputs)

    def _check_trials_from_their_checkpoints(self, config, inputs):
        validation = inputs.splits.validation
        for row in self.report["trials"]:
            trial_dir = os.path.join(self.tune_dir, tuning.PROJECT_NAME, f"trial_{row['trial']}")
            trial = trial_module.Trial.load(os.path.join(trial_dir, "trial.json"))
            self.assertEqual(trial.score, row["val_accuracy"])
            self.assertEqual(trial.score, trial.metrics.get_best_value("val_accuracy"))
            distiller = student.build_distiller(
                config, inputs, "seed_mlp", row["temperature"], row["alpha"],
                self.report["precision"],
            )
            distiller.load_weights(os.path.join(trial_dir, "checkpoint.weights.h5"))
            logits = distiller.student.predict(validation.images, verbose=0)
            measured = training.evaluate_logits(logits, validation.labels)
            self.assertAllClose(measured["accuracy"], row["val_accuracy"])

    def test_rerun_resumes_without_rerunning_trials(self):
        tune_dir = self._copy_search("resume")
        before = _trial_files(tune_dir)
        self.assertCountEqual(before, [row["trial"] for row in self.report["trials"]])

        again = stages.run(self.tune_settings(tune_dir))
        self.assertEqual(_trial_files(tune_dir), before)
        self.assertEqual(again["trials"], self.report["trials"])

        more = stages.run(self.tune_settings(tune_dir, "--max_trials=3"))
        after = _trial_files(tune_dir)
        self.assertLen(after, 3)
        self.assertEqual({t: after[t] for t in before}, before)
        self.assertLen(more["trials"], 3)

    def test_rerun_completes_an_interrupted_trial(self):
        tune_dir = self._copy_search("interrupted")
        project = os.path.join(tune_dir, tuning.PROJECT_NAME)
        finished, interrupted = sorted(_trial_files(tune_dir))
        # The files an interrupted process leaves: the oracle saved the trial as
        # ongoing and its trial.json as RUNNING when it created it; end_trial
        # (completion, end_order, score) never happened.
        trial_path = os.path.join(project, f"trial_{interrupted}", "trial.json")
        trial = trial_module.Trial.load(trial_path)
        running = trial_module.Trial(trial.hyperparameters, trial.trial_id, status="RUNNING")
        running.save(trial_path)
        oracle_path = os.path.join(project, "oracle.json")
        oracle = reporting.read_json(oracle_path)
        oracle.update(ongoing_trials={"tuner0": interrupted}, end_order=[finished])
        with open(oracle_path, "w") as f:
            json.dump(oracle, f)
        mtimes = _trial_files(tune_dir)

        report = stages.run(self.tune_settings(tune_dir))
        self.assertEqual([row["status"] for row in report["trials"]], ["COMPLETED"] * 2)
        self.assertCountEqual(_trial_files(tune_dir), [finished, interrupted])
        self.assertEqual(_trial_files(tune_dir)[finished], mtimes[finished])
        self.assertGreater(_trial_files(tune_dir)[interrupted], mtimes[interrupted])
        rerun = {row["trial"]: row for row in report["trials"]}[interrupted]
        original = {row["trial"]: row for row in self.report["trials"]}[interrupted]
        # The same trial, trained again (on the next shuffles of the shared
        # training stream, so its score need not equal the original's).
        self.assertEqual(
            (rerun["temperature"], rerun["alpha"]), (original["temperature"], original["alpha"])
        )
        self.assertBetween(rerun["val_accuracy"], 0.0, 1.0)

    def test_best_cfg_takes_numpy_values(self):
        # Bayesian optimisation proposes numpy floats after its random start.
        path = os.path.join(tempfile.mkdtemp(), "best.cfg")
        best = {"trial": "06", "val_accuracy": 0.99, "temperature": np.float64(3.5)}
        tuning.write_best_flagfile({**best, "alpha": np.float64(0.25)}, path)
        config = command_line.parse(["--stage=student", f"--flagfile={path}"])
        self.assertEqual((config.distillation.temperature, config.distillation.alpha), (3.5, 0.25))

    def test_best_cfg_drives_the_student_stage(self):
        best_cfg = os.path.join(self.tune_dir, "best.cfg")
        with open(best_cfg) as f:
            self.assertNotIn("--stage", f.read())
        report = stages.run(
            self.settings(
                "--stage=student",
                "--epochs=1",
                f"--flagfile={best_cfg}",
                f"--teacher_dir={self.teacher['export_dir']}",
            )
        )
        self.assertEqual(report["temperature"], self.report["best"]["temperature"])
        self.assertEqual(report["alpha"], self.report["best"]["alpha"])

    def test_other_ranges_do_not_resume_the_search(self):
        with self.assertRaisesRegex(UserError, "other ranges"):
            stages.run(self.tune_settings(self.tune_dir, "--temperature_max=10"))

    def test_bad_ranges_are_rejected(self):
        for argv in (
            ["--temperature_min=5", "--temperature_max=2"],
            ["--temperature_min=0"],
            ["--alpha_min=0.5", "--alpha_max=0.5"],
            ["--alpha_max=1.5"],
            ["--max_trials=0"],
        ):
            with self.assertRaises(flags.IllegalFlagValueError, msg=argv):
                self.tune_settings(self.tune_dir, *argv)


if __name__ == "__main__":
    tf.test.main()
