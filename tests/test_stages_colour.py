"""A 3-channel data set runs every stage end to end.

Generated colour photos, 32x32x3 in three classes (the brightest channel is
the class), written as image folders (`--data_source=directory`): the colour
models as teacher (`resnet_small`) and student (`mobilenet_small`), then
compare (teacher, student and scratch from flag files), tune (2 trials),
predict (on image files) and tflite, each one epoch on 192 training images.
Compare and tune train the small `seed_cnn` and `seed_mlp` (a colour model's
run costs about 8 s of CPU, theirs 2 to 3 s): what they add is their stage on
3 channels.
"""

import os

import helpers
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import command_line, main, reporting, stages

CLASSES = ("blue", "green", "red")
CHANNEL = {"red": 0, "green": 1, "blue": 2}
PER_CLASS = 100
SIZE = 32


def _photo(rng, name):
    """A noisy 32x32 colour image whose `name` channel is the brightest."""
    image = rng.integers(0, 120, (SIZE, SIZE, 3))
    image[..., CHANNEL[name]] += 120
    return image.astype(np.uint8)


def _write_photos(root):
    """`<root>/photos/<class>/<n>.png`, `PER_CLASS` per class; returns the root."""
    rng = np.random.default_rng(0)
    directory = os.path.join(root, "photos")
    for name in CLASSES:
        os.makedirs(os.path.join(directory, name))
        for index in range(PER_CLASS):
            path = os.path.join(directory, name, f"{index:03d}.png")
            tf.io.write_file(path, tf.io.encode_png(_photo(rng, name)))
    return directory


@pytest.fixture(scope="class")
def colour_teacher(request, class_root):
    """The photos (`cls.data_dir`) and a `resnet_small` teacher trained on
    them (`cls.teacher`, the report)."""
    cls = request.cls
    cls.data_dir = _write_photos(class_root)
    cls.teacher = cls.run_stage("--stage=teacher", "--model=resnet_small")


@pytest.mark.slow
@pytest.mark.usefixtures("class_root", "colour_teacher")
class ColourStagesTest(tf.test.TestCase):
    @classmethod
    def argv(cls, *argv):
        """Flags of a small run on the photos, writing under `cls.root`."""
        return [
            "--data_source=directory",
            f"--data_dir={cls.root}/photos",
            "--epochs=1",
            "--batch_size=32",
            "--validation_examples=48",
            "--learning_rate=3e-3",
            f"--saved_models_dir={cls.root}/saved_models",
            f"--log_dir={cls.root}/logs",
            *argv,
        ]

    @classmethod
    def run_stage(cls, *argv):
        return stages.run(command_line.parse(cls.argv(*argv)))

    def _check_training_report(self, report, stage, model):
        self.assertEqual((report["stage"], report["model"]), (stage, model))
        self.assertEqual(report["data"]["image_shape"], [SIZE, SIZE, 3])
        self.assertEqual(report["data"]["num_classes"], len(CLASSES))
        self.assertTrue(os.path.isdir(report["export_dir"]))

    def test_teacher(self):
        self._check_training_report(self.teacher, "teacher", "resnet_small")
        # 605,930 on 32x32x3 with 10 classes, less 7 logits of 128 weights and a bias.
        self.assertEqual(self.teacher["params"], 605_930 - 7 * 129)

    def test_student(self):
        student = self.run_stage(
            "--stage=student",
            "--model=mobilenet_small",
            f"--teacher_dir={self.teacher['export_dir']}",
        )
        self._check_training_report(student, "student", "mobilenet_small")

    def test_compare_from_flag_files(self):
        flagfiles = []
        models = {"teacher": "seed_cnn", "student": "seed_mlp", "scratch": "seed_mlp"}
        for stage, model in models.items():
            path = os.path.join(self.root, f"{stage}.cfg")
            with open(path, "w") as f:
                f.write("\n".join(self.argv(f"--stage={stage}", f"--model={model}")) + "\n")
            flagfiles.append(f"--{stage}_flagfile={path}")
        status = main.run_command(self.argv("--stage=compare", *flagfiles))
        self.assertEqual(status, 0)
        (compare,) = os.listdir(os.path.join(self.root, "saved_models", "compare"))
        summary = reporting.read_json(
            os.path.join(self.root, "saved_models", "compare", compare, "report.json")
        )
        self.assertEqual(sorted(summary["runs"]), sorted(models))
        for stage, export_dir in summary["runs"].items():
            report = {**helpers.read_report(export_dir), "export_dir": export_dir}
            self._check_training_report(report, stage, models[stage])

    def test_tune(self):
        report = self.run_stage(
            "--stage=tune",
            "--model=seed_mlp",
            f"--teacher_dir={self.teacher['export_dir']}",
            "--tuner=random",
            "--max_trials=2",
            f"--tune_dir={self.root}/tune",
        )
        self.assertLen(report["trials"], 2)
        self.assertTrue(os.path.isfile(os.path.join(self.root, "tune", "best.cfg")))

    def test_predict_and_tflite(self):
        files = [
            os.path.join(self.data_dir, name, f"{PER_CLASS - 1:03d}.png") for name in CLASSES
        ]
        predicted = self.run_stage(
            "--stage=predict",
            f"--model_dir={self.teacher['export_dir']}",
            f"--images={','.join(files)}",
        )
        self.assertLen(predicted["predictions"], len(files))
        lite = self.run_stage(
            "--stage=tflite",
            f"--model_dir={self.teacher['export_dir']}",
            f"--tflite_path={self.root}/teacher.tflite",
        )
        self.assertTrue(os.path.isfile(f"{self.root}/teacher.tflite"))
        self.assertAllClose(
            lite["tflite"]["test_accuracy"], lite["saved_model"]["test_accuracy"], atol=0.02
        )


if __name__ == "__main__":
    tf.test.main()
