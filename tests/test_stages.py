"""End to end: the training stages (teacher, student, scratch, compare) on a
small slice of real MNIST, through `stages.run`."""

import glob
import os

import helpers
import pytest
import tensorflow as tf

from kd_tf import cpu, data, export, precision, reporting, stages, training

REPORT_KEYS = {
    "stage",
    "flags",
    "data",
    "model",
    "params",
    "epochs",
    "best_epoch",
    "test_accuracy",
    "test_loss",
    "cpu",
}
EPOCH_KEYS = {"train_seconds", "loss", "accuracy", "val_loss", "val_accuracy"}
STUDENT_KEYS = {
    "teacher_dir", "teacher_logits", "teacher_logits_seconds", "teacher_validation_accuracy"
}
# Parameters of the models on MNIST, as docs/models.md's table gives them.
README_PARAMS = {"seed_mlp": 109_386, "compact_cnn": 12_146}


@pytest.mark.slow
@pytest.mark.usefixtures("class_root", "class_teacher")
class StagesTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.test_split = data.read_packaged_mnist()[1]

    def settings(self, *argv):
        return helpers.slice_config(self.root, *argv)

    def _check_export(self, report, stage, root=None, train_examples=384):
        """Checks the export of `report` on disk, written under `root` (the
        class's by default); returns its report.json."""
        root = root or self.root
        export_dir = report["export_dir"]
        self.assertEqual(os.path.dirname(os.path.dirname(export_dir)), f"{root}/saved_models")
        on_disk = helpers.read_report(export_dir)
        self.assertTrue(REPORT_KEYS <= set(on_disk), REPORT_KEYS - set(on_disk))
        self.assertEqual(on_disk["stage"], stage)
        self.assertLen(on_disk["epochs"], 2)
        for epoch in on_disk["epochs"]:
            self.assertTrue(EPOCH_KEYS <= set(epoch))
        self.assertIn(on_disk["best_epoch"], (1, 2))
        best = on_disk["epochs"][on_disk["best_epoch"] - 1]["val_accuracy"]
        self.assertEqual(best, max(e["val_accuracy"] for e in on_disk["epochs"]))
        self.assertEqual(on_disk["data"]["train_examples"], train_examples)
        self.assertEqual(on_disk["data"]["test_examples"], 10000)
        self.assertEqual(on_disk["flags"]["stage"], stage)
        self.assertEqual(on_disk["cpu"]["model"], cpu.describe().model)
        self.assertEqual(on_disk["cpu"]["choices"]["precision"], precision.resolve("auto", gpus=[]))
        self.assertTrue(os.path.isfile(os.path.join(export_dir, "assets.extra", "curves.png")))
        self.assertTrue(glob.glob(f"{root}/logs/{stage}/*/train/events.out.tfevents.*"))

        served = export.load_serving_model(export_dir)
        test = served.predict_logits(self.test_split.images)
        measured = training.evaluate_logits(test, self.test_split.labels)
        self.assertAllClose(measured["accuracy"], on_disk["test_accuracy"])
        self.assertAllClose(measured["loss"], on_disk["test_loss"], rtol=1e-5)
        return on_disk

    def test_teacher(self):
        report = self._check_export(
            self.teacher.report,
            "teacher",
            root=self.teacher.root,
            train_examples=helpers.TEACHER_TRAIN_EXAMPLES,
        )
        self.assertEqual(report["model"], helpers.TEACHER_MODEL)
        self.assertGreater(report["test_accuracy"], 0.5)

    def _check_student_export(self, report, mode):
        """`_check_export` and a student's own fields, its logits `mode`
        (cached, online)."""
        on_disk = self._check_export(report, "student")
        self.assertTrue(STUDENT_KEYS <= set(on_disk))
        self.assertEqual(on_disk["teacher_logits"], mode)
        self.assertEqual(on_disk["teacher_dir"], self.teacher.export_dir)
        self.assertEqual(on_disk["model"], "seed_mlp")
        # The teacher measured its best epoch on the same validation split,
        # before its export, in its training precision: a near tie may flip.
        teacher = self.teacher.report
        self.assertAllClose(
            on_disk["teacher_validation_accuracy"],
            teacher["epochs"][teacher["best_epoch"] - 1]["val_accuracy"], atol=2 / 256, rtol=0,
        )
        if mode == "cached":
            self.assertGreater(on_disk["teacher_logits_seconds"], 0.0)

    def test_student_logits_in_memory_on_disk_and_online(self):
        cache_dir = os.path.join(self.root, "logits")
        os.makedirs(cache_dir)

        def student(*argv):
            return stages.run(
                self.settings(
                    "--stage=student",
                    f"--teacher_dir={self.teacher.export_dir}",
                    "--alpha=0.5",
                    helpers.FLOAT32,
                    *argv,
                )
            )

        memory = student("--teacher_logits=cached", "--logits_cache=memory")
        disk = student(
            "--teacher_logits=cached", "--logits_cache=disk", f"--logits_cache_dir={cache_dir}"
        )
        online = student("--teacher_logits=online")
        for report, mode in ((memory, "cached"), (disk, "cached"), (online, "online")):
            self._check_student_export(report, mode)
        self.assertEqual(memory["logits_cache"], "memory")
        self.assertEqual(disk["logits_cache"], "disk")
        self.assertIsNone(online["logits_cache"])
        self.assertGreater(disk["logits_cache_megabytes"], 0)
        # The shards lived in a fresh subdirectory of --logits_cache_dir, removed at the end.
        self.assertEqual(os.listdir(cache_dir), [])
        # Online and cached-in-memory logits: the same examples in the same order,
        # the same teacher logits, hence the same training.
        for key in ("loss", "val_loss", "val_accuracy"):
            expected = [epoch[key] for epoch in memory["epochs"]]
            self.assertAllClose([epoch[key] for epoch in online["epochs"]], expected, rtol=1e-5)
        self.assertAllClose(online["test_accuracy"], memory["test_accuracy"])
        # Streamed from disk: another (seeded) order, the same objective.
        self.assertLess(disk["epochs"][1]["loss"], disk["epochs"][0]["loss"])
        self.assertAllClose(disk["test_accuracy"], memory["test_accuracy"], atol=0.05)

    def _compare_flagfiles(self):
        """Flag files whose models differ from their stages' defaults (teacher
        lenet_bn, student and scratch seed_mlp) and whose learning rates differ
        from each other: `{stage: (path, model, learning rate)}`."""
        flagfiles = {}
        for stage, model, rate in (
            ("teacher", "seed_mlp", 0.002),
            ("student", "compact_cnn", 0.003),
            ("scratch", "compact_cnn", 0.004),
        ):
            path = os.path.join(self.root, f"{stage}.cfg")
            with open(path, "w") as f:
                f.write(f"--stage={stage}\n--model={model}\n--learning_rate={rate}\n--epochs=5\n")
            flagfiles[stage] = (path, model, rate)
        return flagfiles

    def test_compare(self):
        flagfiles = self._compare_flagfiles()
        report = stages.run(
            self.settings(
                "--stage=compare",
                *(f"--{stage}_flagfile={path}" for stage, (path, _, _) in flagfiles.items()),
            )
        )
        self.assertEqual(
            [row["run"] for row in report["summary"]], ["teacher", "student", "scratch"]
        )
        for stage, (_, model, rate) in flagfiles.items():
            with self.subTest(stage=stage):
                sub = helpers.read_report(report["runs"][stage])
                self.assertEqual(sub["stage"], stage)
                self.assertEqual(sub["model"], model, "the flag file's --model was used")
                self.assertEqual(sub["params"], README_PARAMS[model])
                self.assertEqual(sub["flags"]["learning_rate"], rate)
                self.assertLen(sub["epochs"], 2, "flags given to compare override the flag files")
                self.assertIn("test_accuracy", sub["epochs"][0])
        student = helpers.read_report(report["runs"]["student"])
        self.assertEqual(student["teacher_dir"], report["runs"]["teacher"])
        for name in ("comparison.png", "confusion.png", "report.json", "summary.md"):
            self.assertTrue(os.path.isfile(os.path.join(report["export_dir"], name)))
        on_disk = reporting.read_json(os.path.join(report["export_dir"], "report.json"))
        self.assertEqual(on_disk["runs"], report["runs"])
        # Per class, named: each run's class accuracies, weighted by the
        # classes' test examples, make the accuracy its export measured.
        per_class = report["per_class"]
        self.assertEqual([row["class"] for row in per_class], [str(d) for d in range(10)])
        self.assertEqual(sum(row["examples"] for row in per_class), 10000)
        for row in report["summary"]:
            weighted = sum(c["examples"] * c[f"{row['run']}_accuracy"] for c in per_class) / 10000
            self.assertAllClose(weighted, row["test_accuracy"], atol=1e-9)
        with open(os.path.join(report["export_dir"], "summary.md")) as f:
            self.assertIn("| class | examples | teacher_accuracy | student_accuracy |", f.read())

    def test_scratch_exports_are_versioned_and_not_overwritten(self):
        report = stages.run(self.settings("--stage=scratch"))
        self.assertEqual(self._check_export(report, "scratch")["model"], "seed_mlp")
        first = report["export_dir"]
        before = helpers.snapshot(first)
        second = stages.run(self.settings("--stage=scratch", "--epochs=1"))["export_dir"]
        self.assertEqual(int(os.path.basename(second)), int(os.path.basename(first)) + 1)
        self.assertEqual(helpers.snapshot(first), before)
