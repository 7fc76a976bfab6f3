"""The distillation loss's flags: parsed into typed config values at the
edge, refused in one line, carried into compare's sub-runs and backups."""

import os

import tensorflow as tf
from absl import flags

from kd_tf import backup, command_line, config, loss_flags
from kd_tf.errors import ConfigError


def _refusal(*argv):
    with tf.test.TestCase().assertRaises((flags.Error, ConfigError)) as caught:
        command_line.parse(["--stage=student", *argv])
    return command_line.describe(caught.exception)


class ParseTest(tf.test.TestCase):
    def test_forms(self):
        cases = {
            ("distillation_loss", "kd"): (("kd", 1.0),),
            ("distillation_loss", "kd:0.5, dist:0.5"): (("kd", 0.5), ("dist", 0.5)),
            ("hint_layers", ""): (),
            ("hint_layers", "penultimate"): (("penultimate", "penultimate"),),
            ("hint_layers", "conv2:block2_relu,fc1"): (("conv2", "block2_relu"), ("fc1", "fc1")),
            ("tune_losses", "kd,dkd"): ("kd", "dkd"),
            ("tune_ranges", "dkd_beta:1:16,dist_gamma:0:2"): (
                ("dkd_beta", 1.0, 16.0),
                ("dist_gamma", 0.0, 2.0),
            ),
        }
        for (name, text), expected in cases.items():
            with self.subTest(name=name, text=text):
                value = loss_flags.parse(name, text)
                self.assertEqual(value, expected)
                self.assertEqual(loss_flags.parse(name, loss_flags.format_value(name, value)), value)

    def test_flags_set_typed_fields(self):
        parsed = command_line.parse(
            ["--stage=tune", "--distillation_loss=dkd", "--dkd_beta=2", "--hint_layers=penultimate",
             "--mixup_alpha=0.2", "--tune_losses=kd,dkd", "--tune_ranges=dkd_beta:1:16"]
        )
        self.assertEqual(parsed.distillation.distillation_loss, (("dkd", 1.0),))
        self.assertEqual(parsed.distillation.dkd_beta, 2.0)
        self.assertEqual(parsed.distillation.hint_layers, (("penultimate", "penultimate"),))
        self.assertEqual(parsed.tune.tune_ranges, (("dkd_beta", 1.0, 16.0),))
        self.assertEqual(command_line.parse(["--stage=student"]), config.Config(stage="student"))

    def test_refusals_are_one_line(self):
        cases = {
            ("--distillation_loss=kld",): "--distillation_loss must be kd, dkd or dist",
            ("--distillation_loss=kd:heavy",): "--distillation_loss must be kd, dkd or dist",
            ("--distillation_loss=kd:0",): "weight > 0",
            ("--distillation_loss=kd,kd",): "each once",
            ("--hint_layers=a:b:c",): "--hint_layers must be penultimate or a list",
            ("--dkd_beta=-1",): "--dkd_beta must be >= 0",
            ("--hint_weight=0",): "--hint_weight must be > 0",
            ("--mixup_alpha=0.2", "--teacher_logits=cached"): "cached teacher logits cannot follow",
            ("--tune_ranges=dkd_beta:3:1",): "--tune_ranges must be a list NAME:MIN:MAX",
            ("--tune_ranges=temperature:1:3",): "--tune_ranges must be a list NAME:MIN:MAX",
            ("--tune_ranges=dist_beta:1:3",): "searches a setting of a loss no trial uses",
            ("--tune_ranges=hint_weight:1:3",): "there are no hints: pass --hint_layers",
            ("--tune_losses=kd,svm",): "--tune_losses must be a list of kd, dkd and dist",
        }
        for argv, message in cases.items():
            with self.subTest(argv=argv):
                line = _refusal(*argv)
                self.assertIn(message, line)
                self.assertNotIn("\n", line)

    def test_compare_carries_them_into_its_runs(self):
        root = self.get_temp_dir()
        files = []
        for stage in config.COMPARE_STAGES:
            path = os.path.join(root, f"{stage}.cfg")
            with open(path, "w") as f:
                f.write(f"--stage={stage}\n")
            files.append(f"--{stage}_flagfile={path}")
        parsed = command_line.parse(
            ["--stage=compare", *files, "--distillation_loss=kd:0.5,dist:0.5",
             "--hint_layers=penultimate"]
        )
        student = dict(parsed.compare.runs)["student"]
        self.assertEqual(student.distillation.distillation_loss, (("kd", 0.5), ("dist", 0.5)))
        self.assertEqual(student.distillation.hint_layers, (("penultimate", "penultimate"),))


class BackupFieldsTest(tf.test.TestCase):
    def test_the_loss_defines_a_student_run(self):
        base = config.fields(config.Config(stage="student"))
        fields = backup.run_fields(base, "student", "seed_mlp")
        for name, value in (
            ("distillation_loss", [["dkd", 1.0]]),
            ("dkd_beta", 2.0),
            ("dist_gamma", 2.0),
            ("hint_layers", [["penultimate", "penultimate"]]),
            ("hint_weight", 3.0),
            ("mixup_alpha", 0.2),
        ):
            with self.subTest(field=name):
                other = backup.run_fields({**base, name: value}, "student", "seed_mlp")
                self.assertNotEqual(other, fields)


if __name__ == "__main__":
    tf.test.main()
