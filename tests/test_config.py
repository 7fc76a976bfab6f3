"""The typed config and the command-line layer that builds it (fast, no training)."""

import glob
import os

import helpers
import tensorflow as tf
from absl import flags

from kd_tf import command_line, config
from kd_tf.errors import ConfigError, UserError

# Every flag a run report lists under "flags": the first release's, --precision and
# the teacher's --teacher_pixel_range and --teacher_output, the image folders'
# --data_dir, --image_size and --test_fraction, the distillation losses' and
# mixup's.
REPORT_FLAGS = (
    "alpha alpha_max alpha_min augment augment_views backup_dir batch_size cpu_devices "
    "data_dir data_memory_mb data_source dataset deterministic epochs eval_batch_size executions_per_trial export_dir "
    "dist_beta dist_gamma distillation_loss dkd_alpha dkd_beta dkd_warmup_epochs hint_layers "
    "hint_weight mixup_alpha tune_losses tune_ranges "
    "idx_dir image_size images learning_rate log_dir logits_cache logits_cache_dir logits_memory_mb "
    "lr_schedule max_trials model model_dir monitor_test optimizer output_image overwrite precision print_format "
    "quantize saved_models_dir scratch_flagfile seed stage steps_per_execution strategy "
    "min_teacher_accuracy student_flagfile teacher_class_order teacher_dir teacher_flagfile teacher_logits teacher_output teacher_pixel_range "
    "temperature temperature_max "
    "temperature_min test_fraction test_index tflite_path tfds_data_dir train_examples tune_dir tuner "
    "validation_examples warmup_epochs weight_decay"
).split()


def _describe_rejection(*argv):
    with tf.test.TestCase().assertRaises((flags.Error, ConfigError)) as caught:
        command_line.parse(list(argv))
    return command_line.describe(caught.exception)


class ConfigTest(tf.test.TestCase):
    def test_report_flags_are_the_first_releases(self):
        self.assertEqual(list(config.fields(config.Config())), sorted(REPORT_FLAGS))

    def test_flags_set_their_fields(self):
        parsed = command_line.parse(
            ["--stage=student", "--epochs=3", "--alpha=0.5", "--seed=7", "--test_index=4,2",
             "--teacher_dir=/t", "--quantize=int8", "--tune_dir=/s", "--augment"]
        )
        expected = config.Config(
            stage="student",
            optimization=config.OptimizationConfig(epochs=3),
            distillation=config.DistillationConfig(alpha=0.5, teacher_dir="/t"),
            runtime=config.RuntimeConfig(seed=7),
            predict=config.PredictConfig(test_index=(4, 2)),
            lite=config.LiteConfig(quantize="int8"),
            tune=config.TuneConfig(tune_dir="/s"),
            data=config.DataConfig(augment=True),
        )
        self.assertEqual(parsed, expected)

    def test_with_fields_replaces_leaves_by_name(self):
        changed = config.with_fields(config.Config(), epochs=2, seed=5, stage="scratch")
        self.assertEqual(changed.optimization.epochs, 2)
        self.assertEqual(changed.runtime.seed, 5)
        self.assertEqual(changed.stage, "scratch")
        self.assertEqual(changed.optimization.batch_size, config.OptimizationConfig().batch_size)
        with self.assertRaisesRegex(TypeError, "unknown config fields"):
            config.with_fields(config.Config(), epoch=2)

    def test_validation_names_the_field_and_the_flag(self):
        cases = {
            "epochs": (0, "epochs must be >= 1"),
            "learning_rate": (0.0, "learning_rate must be > 0"),
            "alpha": (1.5, "alpha must be in [0, 1]"),
            "train_examples": (0, "train_examples must be >= 1"),
            "test_index": ((), "test_index must be a comma-separated list"),
            "optimizer": ("rmsprop", "optimizer must be one of adam"),
        }
        for field, (value, message) in cases.items():
            with self.subTest(field=field):
                with self.assertRaises(ConfigError) as caught:
                    config.validate(config.with_fields(config.Config(), **{field: value}))
                self.assertEqual(caught.exception.fields, (field,))
                self.assertStartsWith(str(caught.exception), message)
                self.assertStartsWith(command_line.describe(caught.exception), f"--{message}")
        config.validate(config.Config())

    def test_counts_below_one_or_not_whole_are_refused(self):
        # What data.load_splits checked itself before the redesign.
        for argument, message in (
            ("--validation_examples=0", "--validation_examples must be >= 1"),
            ("--validation_examples=-3", "--validation_examples must be >= 1"),
            ("--validation_examples=2.5", "--validation_examples=2.5"),
            ("--validation_examples=True", "--validation_examples=True"),
            ("--train_examples=0", "--train_examples must be >= 1"),
            ("--train_examples=-1", "--train_examples must be >= 1"),
        ):
            with self.subTest(argument=argument):
                self.assertIn(message, _describe_rejection("--stage=teacher", argument))

    def test_combinations(self):
        self.assertIn(
            "--temperature_min must be < --temperature_max",
            _describe_rejection("--stage=tune", "--temperature_min=5", "--temperature_max=2"),
        )
        self.assertIn(
            "--cpu_devices cannot be combined with --strategy=multi_worker",
            _describe_rejection("--stage=teacher", "--strategy=multi_worker", "--cpu_devices=2"),
        )

    def test_describe_keeps_other_braces(self):
        error = ConfigError(("strategy",), '{0} needs TF_CONFIG like {"task": {"index": 0}}')
        self.assertEqual(
            command_line.describe(error), '--strategy needs TF_CONFIG like {"task": {"index": 0}}'
        )


class CompareCompositionTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.root = self.get_temp_dir()
        self.flagfiles = []
        for stage, model in (("teacher", "seed_cnn"), ("student", "compact_cnn"), ("scratch", "seed_mlp")):
            path = os.path.join(self.root, f"{stage}.cfg")
            with open(path, "w") as f:
                f.write(f"--stage={stage}\n--model={model}\n--epochs=7\n--alpha=0.3\n")
            self.flagfiles.append(f"--{stage}_flagfile={path}")

    def test_flag_files_with_compares_flags_on_top(self):
        parsed = command_line.parse(
            ["--stage=compare", *self.flagfiles, "--epochs=2", "--seed=9",
             f"--export_dir={self.root}/cmp", "--teacher_dir=/ignored"]
        )
        runs = dict(parsed.compare.runs)
        self.assertEqual(list(runs), ["teacher", "student", "scratch"])
        for stage, model in (("teacher", "seed_cnn"), ("student", "compact_cnn"), ("scratch", "seed_mlp")):
            with self.subTest(stage=stage):
                run = runs[stage]
                self.assertEqual(run.stage, stage)
                self.assertEqual(run.model.model, model)  # from its flag file
                self.assertEqual(run.distillation.alpha, 0.3)  # from its flag file
                self.assertEqual(run.optimization.epochs, 2)  # compare's flag on top
                self.assertEqual(run.runtime.seed, 9)
                self.assertTrue(run.runtime.monitor_test)
                self.assertIsNone(run.export.export_dir)  # compare's own
                self.assertIsNone(run.distillation.teacher_dir)  # compare's own

    def test_a_missing_flag_file_is_named(self):
        missing = os.path.join(self.root, "nope.cfg")
        with self.assertRaisesRegex(UserError, f"--student_flagfile={missing} does not exist"):
            command_line.parse(["--stage=compare", f"--student_flagfile={missing}"])

    def test_sub_runs_are_validated(self):
        with open(os.path.join(self.root, "student.cfg"), "a") as f:
            f.write("--temperature=0\n")
        self.assertIn("--temperature must be > 0", _describe_rejection("--stage=compare", *self.flagfiles))


class FlagParsingTest(tf.test.TestCase):
    def test_bad_flag_values_are_rejected(self):
        cases = {
            "--temperature=0": "--temperature must be > 0",
            "--temperature=-2": "--temperature must be > 0",
            "--alpha=1.5": "--alpha must be in [0, 1]",
            "--alpha=-0.1": "--alpha must be in [0, 1]",
            "--epochs=0": "--epochs must be >= 1",
            "--batch_size=0": "--batch_size must be >= 1",
            "--steps_per_execution=0": "--steps_per_execution must be >= 1",
            "--model=resnet9000": "--model",
            "--stage=deploy": "--stage",
        }
        for argument, message in cases.items():
            with self.subTest(argument=argument):
                stage = [] if argument.startswith("--stage") else ["--stage=student"]
                self.assertIn(message, _describe_rejection(*stage, argument))

    def test_bad_tune_ranges_are_rejected(self):
        for argv in (
            ["--temperature_min=5", "--temperature_max=2"],
            ["--temperature_min=0"],
            ["--alpha_min=0.5", "--alpha_max=0.5"],
            ["--alpha_max=1.5"],
            ["--max_trials=0"],
        ):
            with self.assertRaises(flags.IllegalFlagValueError, msg=argv):
                command_line.parse(["--stage=tune", "--teacher_dir=/t", "--tune_dir=/s", *argv])

    def test_flag_files_parse(self):
        for path in sorted(glob.glob(os.path.join(helpers.REPO, "flags", "*.cfg"))):
            with self.subTest(path=os.path.basename(path)):
                cwd = os.getcwd()
                os.chdir(helpers.REPO)
                try:
                    settings = command_line.parse([f"--flagfile={path}"])
                finally:
                    os.chdir(cwd)
                self.assertIn(settings.stage, config.STAGES)


if __name__ == "__main__":
    tf.test.main()
