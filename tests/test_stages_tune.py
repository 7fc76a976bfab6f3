"""End to end: `--stage=tune` on a small slice of real MNIST: the search, its
objective, resuming, and best.cfg driving the student stage."""

import glob
import json
import os
import shutil

import helpers
import pytest
import tensorflow as tf
from keras_tuner.src.engine import trial as trial_module

from kd_tf import distribution, reporting, stages, training, tuning
from kd_tf.errors import UserError
from kd_tf.stages import student, tune


def _trial_files(tune_dir):
    """`{trial_id: modification time of its trial.json}`."""
    pattern = os.path.join(tune_dir, tuning.PROJECT_NAME, "trial_*", "trial.json")
    return {
        os.path.basename(os.path.dirname(path))[len("trial_") :]: os.stat(path).st_mtime_ns
        for path in glob.glob(pattern)
    }


def _trials_on_disk(tune_dir):
    """What each trial's trial.json records, read as plain JSON: `{trial_id:
    (status, temperature, alpha, {epoch: val_accuracy})}` (keras-tuner records
    the best epoch of each execution)."""
    trials = {}
    for trial_id in _trial_files(tune_dir):
        path = os.path.join(tune_dir, tuning.PROJECT_NAME, f"trial_{trial_id}", "trial.json")
        with open(path) as f:
            state = json.load(f)
        history = state["metrics"]["metrics"].get("val_accuracy", {"observations": []})
        values = state["hyperparameters"]["values"]
        trials[trial_id] = (
            state["status"],
            values["temperature"],
            values["alpha"],
            {o["step"] + 1: o["value"][0] for o in history["observations"]},
        )
    return trials


@pytest.fixture(scope="class")
def search(request, class_root, class_teacher):
    """The search of `tune_settings`, run once: `cls.tune_dir`, `cls.report`."""
    cls = request.cls
    cls.tune_dir = os.path.join(class_root, "tune")
    cls.report = stages.run(cls.tune_settings(cls.tune_dir))


@pytest.mark.usefixtures("search")
class TuneStageTest(tf.test.TestCase):
    @classmethod
    def settings(cls, *argv):
        return helpers.slice_config(cls.root, *argv)

    @classmethod
    def tune_settings(cls, tune_dir, *argv):
        return cls.settings(
            "--stage=tune",
            f"--teacher_dir={cls.teacher.export_dir}",
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
        on_disk = reporting.read_json(os.path.join(self.tune_dir, "report.json"))
        self.assertEqual(on_disk["trials"], trials)
        self.assertEqual(on_disk["teacher_dir"], self.teacher.export_dir)
        self.assertEqual(on_disk["teacher_logits"], "cached")
        self.assertEqual(on_disk["objective"], "val_accuracy")
        self.assertTrue(os.path.isfile(os.path.join(self.tune_dir, "temperature.png")))

    def test_best_is_the_trial_files_best(self):
        # The best validation accuracy of any epoch of any completed trial, from
        # the trials' own files rather than the tuner's score.
        scores = {
            trial_id: max(history.values())
            for trial_id, (status, _, _, history) in _trials_on_disk(self.tune_dir).items()
            if status == "COMPLETED"
        }
        self.assertLen(scores, 2)
        best = self.report["best"]
        self.assertEqual(best["val_accuracy"], max(scores.values()))
        tied = [trial_id for trial_id, score in scores.items() if score == best["val_accuracy"]]
        self.assertIn(best["trial"], tied)
        _, temperature, alpha, _ = _trials_on_disk(self.tune_dir)[best["trial"]]
        self.assertEqual((best["temperature"], best["alpha"]), (temperature, alpha))
        on_disk = reporting.read_json(os.path.join(self.tune_dir, "report.json"))
        self.assertEqual(on_disk["best"], best)

    def test_objective_is_validation_accuracy(self):
        config = self.tune_settings(self.tune_dir)
        strategy = distribution.strategy_for(config.runtime, config.optimization.batch_size)
        policy = self.report["precision"]
        with student.prepare_distillation(config, strategy, policy) as inputs:
            self._check_trials_from_their_checkpoints(config, inputs)

    def _check_trials_from_their_checkpoints(self, config, inputs):
        """Each row against its trial's files: the hyperparameters and epochs of
        trial.json, and the accuracy of its checkpoint re-evaluated on the
        validation split."""
        validation = inputs.splits.validation
        on_disk = _trials_on_disk(self.tune_dir)
        for row in self.report["trials"]:
            _, temperature, alpha, history = on_disk[row["trial"]]
            self.assertEqual((row["temperature"], row["alpha"]), (temperature, alpha))
            best_epoch = max(history, key=history.get)
            self.assertEqual(row["best_epoch"], best_epoch)
            self.assertEqual(row["val_accuracy"], history[best_epoch])
            trial_dir = os.path.join(self.tune_dir, tuning.PROJECT_NAME, f"trial_{row['trial']}")
            distill = tune.trial_distillation(config, {"temperature": temperature, "alpha": alpha})
            distiller = student.build_distiller(
                config, inputs, "seed_mlp", self.report["precision"], distill
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

    def _interrupt(self, tune_dir, finished, interrupted):
        """Leaves the files an interrupted process leaves: the oracle saved the
        trial as ongoing and its trial.json as RUNNING when it created it;
        end_trial (completion, end_order, score) never happened."""
        project = os.path.join(tune_dir, tuning.PROJECT_NAME)
        trial_path = os.path.join(project, f"trial_{interrupted}", "trial.json")
        trial = trial_module.Trial.load(trial_path)
        running = trial_module.Trial(trial.hyperparameters, trial.trial_id, status="RUNNING")
        running.save(trial_path)
        oracle_path = os.path.join(project, "oracle.json")
        oracle = reporting.read_json(oracle_path)
        oracle.update(ongoing_trials={"tuner0": interrupted}, end_order=[finished])
        with open(oracle_path, "w") as f:
            json.dump(oracle, f)

    def test_rerun_completes_an_interrupted_trial(self):
        tune_dir = self._copy_search("interrupted")
        finished, interrupted = sorted(_trial_files(tune_dir))
        self._interrupt(tune_dir, finished, interrupted)
        mtimes = _trial_files(tune_dir)

        report = stages.run(self.tune_settings(tune_dir))
        self.assertEqual([row["status"] for row in report["trials"]], ["COMPLETED"] * 2)
        self.assertCountEqual(_trial_files(tune_dir), [finished, interrupted])
        self.assertEqual(_trial_files(tune_dir)[finished], mtimes[finished])
        self.assertGreater(_trial_files(tune_dir)[interrupted], mtimes[interrupted])
        rerun = {row["trial"]: row for row in report["trials"]}[interrupted]
        original = {row["trial"]: row for row in self.report["trials"]}[interrupted]
        # The same trial trained again: from the same student weights (seeded
        # by its values) on the same batches (the training stream is a
        # function of --seed alone), so to the same result.
        self.assertEqual(rerun, original)

    def test_best_cfg_drives_the_student_stage(self):
        best_cfg = os.path.join(self.tune_dir, "best.cfg")
        with open(best_cfg) as f:
            self.assertNotIn("--stage", f.read())
        report = stages.run(
            self.settings(
                "--stage=student",
                f"--flagfile={best_cfg}",
                f"--teacher_dir={self.teacher.export_dir}",
            )
        )
        best = self.report["best"]
        self.assertEqual(report["temperature"], best["temperature"])
        self.assertEqual(report["alpha"], best["alpha"])
        # Trained again by the student stage, from the same weights on the same
        # batches, the best trial's setting gives its epochs again
        # (docs/tuning.md): its best epoch is the student's.
        validation = [epoch["val_accuracy"] for epoch in report["epochs"]]
        self.assertEqual(report["best_epoch"], best["best_epoch"])
        self.assertEqual(max(validation), best["val_accuracy"])

    def test_other_ranges_do_not_resume_the_search(self):
        with self.assertRaisesRegex(UserError, "other ranges"):
            stages.run(self.tune_settings(self.tune_dir, "--temperature_max=10"))
        with self.assertRaisesRegex(UserError, "other ranges"):
            stages.run(self.tune_settings(self.tune_dir, "--tune_losses=kd,dkd"))

    def test_the_loss_and_its_settings_are_searched(self):
        """Trials choose kd or dkd, and DKD's beta only in dkd trials; the
        search resumes, and best.cfg sets the loss of the student stage."""
        tune_dir = os.path.join(self.root, "losses")
        argv = ("--tuner=random", "--max_trials=3", "--tune_losses=kd,dkd",
                "--tune_ranges=dkd_beta:1:16", "--dkd_warmup_epochs=1")
        report = stages.run(self.tune_settings(tune_dir, *argv))
        self.assertLen(report["trials"], 3)
        self.assertCountEqual({row["distillation_loss"] for row in report["trials"]}, ["kd", "dkd"])
        for row in report["trials"]:
            self.assertIn(row["distillation_loss"], ("kd", "dkd"))
            self.assertEqual("dkd_beta" in row, row["distillation_loss"] == "dkd")
            if "dkd_beta" in row:
                self.assertBetween(row["dkd_beta"], 1.0, 16.0)
        self.assertEqual(stages.run(self.tune_settings(tune_dir, *argv))["trials"], report["trials"])
        best = report["best"]
        student_report = stages.run(
            self.settings(
                "--stage=student",
                f"--flagfile={os.path.join(tune_dir, 'best.cfg')}",
                "--dkd_warmup_epochs=1",
                f"--teacher_dir={self.teacher.export_dir}",
            )
        )
        (term,) = student_report["distillation_loss"]
        self.assertEqual(term["name"], best["distillation_loss"])
        self.assertEqual(term.get("beta"), best.get("dkd_beta"))
        self.assertEqual(student_report["best_epoch"], best["best_epoch"])
