"""Strategies, replica equivalence, multi-worker training and resuming after a kill.

The in-process tests use the 2 logical CPU devices that tests/conftest.py
configures; the multi-worker and kill tests start real `python -m kd_tf.main`
processes on a small slice of real MNIST.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import keras
import tensorflow as tf

from kd_tf import (
    backup,
    command_line,
    data,
    distribution,
    export,
    models,
    pipelines,
    reporting,
    stages,
    training,
)
from kd_tf.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLICE = ["--train_examples=256", "--validation_examples=128", "--batch_size=64"]
PROCESS_TIMEOUT = 180


def _settings(*argv):
    return command_line.parse(list(argv))


def _strategy(*argv):
    config = _settings("--stage=teacher", *argv)
    return distribution.strategy_for(config.runtime, config.optimization.batch_size)


def _exported_weights(export_dir):
    return [v.numpy() for v in tf.saved_model.load(export_dir).variables]


def _report(export_dir):
    return reporting.read_json(os.path.join(export_dir, export.ASSETS_EXTRA, "report.json"))


class StrategyTest(tf.test.TestCase):
    def test_default_mirrored_and_auto(self):
        default = _strategy("--strategy=default")
        self.assertEqual(distribution.strategy_name(default), "default")
        self.assertEqual(distribution.replicas(default), 1)
        mirrored = _strategy("--strategy=mirrored", "--cpu_devices=2")
        self.assertIsInstance(mirrored, tf.distribute.MirroredStrategy)
        self.assertEqual(distribution.replicas(mirrored), 2)
        # No GPU here: auto is the default strategy.
        auto = _strategy()
        self.assertEqual(distribution.strategy_name(auto), "default")
        for strategy in (default, mirrored, auto):
            self.assertEqual(distribution.workers(strategy), 1)
            self.assertTrue(distribution.is_chief(strategy))
            self.assertEqual(distribution.worker_dir(strategy, "/x/y"), "/x/y")

    def test_user_errors(self):
        tf.config.list_logical_devices()  # TensorFlow has set up its devices.
        cases = {
            ("--strategy=mirrored", "--cpu_devices=2", "--batch_size=65"): "multiple of 2",
            ("--strategy=mirrored", "--cpu_devices=3"): "too late",
            ("--strategy=multi_worker",): "needs TF_CONFIG",
        }
        environ = dict(os.environ)
        os.environ.pop("TF_CONFIG", None)
        try:
            for argv, message in cases.items():
                with self.subTest(argv=argv), self.assertRaisesRegex(UserError, message):
                    _strategy(*argv)
            for tf_config, message in (
                ("{not json", "not a valid cluster"),
                (
                    '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
                    "not in",
                ),
            ):
                os.environ["TF_CONFIG"] = tf_config
                with self.subTest(tf_config=tf_config), self.assertRaisesRegex(UserError, message):
                    _strategy("--strategy=multi_worker")
        finally:
            os.environ.clear()
            os.environ.update(environ)


class ReplicaEquivalenceTest(tf.test.TestCase):
    """1 replica and 2 replicas (2 logical CPUs), same seed and global batch:
    the same weights after one epoch of 4 steps, in every training stage.

    Models without dropout (per-replica masks would differ): the teacher is
    `compact_cnn` (synchronized batch norm), scratch and student `seed_mlp`.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root)
        super().tearDownClass()

    def _assert_same_weights(self, name, *argv):
        weights = {}
        for strategy, replicas in (("default", 1), ("mirrored", 2)):
            export_dir = os.path.join(self.root, f"{name}-{strategy}")
            stages.run(
                _settings(
                    *SLICE,
                    "--epochs=1",
                    f"--strategy={strategy}",
                    "--cpu_devices=2",
                    f"--export_dir={export_dir}",
                    f"--log_dir={self.root}/logs",
                    *argv,
                )
            )
            report = _report(export_dir)
            self.assertEqual(report["replicas"], replicas)
            self.assertEqual(report["strategy"], strategy)
            self.assertEqual(report["workers"], 1)
            weights[strategy] = _exported_weights(export_dir)
        self.assertLen(weights["mirrored"], len(weights["default"]))
        for one, two in zip(weights["default"], weights["mirrored"]):
            self.assertAllClose(one, two, atol=1e-5, rtol=0)
        return os.path.join(self.root, f"{name}-default")

    def test_every_stage(self):
        teacher = self._assert_same_weights("teacher", "--stage=teacher", "--model=compact_cnn")
        self._assert_same_weights("scratch", "--stage=scratch")
        for mode in ("cached", "online"):
            with self.subTest(teacher_logits=mode):
                self._assert_same_weights(
                    f"student-{mode}",
                    "--stage=student",
                    f"--teacher_dir={teacher}",
                    f"--teacher_logits={mode}",
                )


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv, env=None, log=None):
    return subprocess.Popen(
        [sys.executable, "-m", "kd_tf.main", *argv],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def _wait_all(processes, timeout):
    """Exit codes of `processes`; kills them all if one exceeds `timeout`."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1, deadline - time.monotonic())) for p in processes]
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
            p.wait()
        raise


class MultiWorkerTest(tf.test.TestCase):
    def test_two_workers_export_once(self):
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root)
        worker_tmp = os.path.join(root, "tmp")
        os.makedirs(worker_tmp)
        cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
        export_dir = os.path.join(root, "saved_models", "scratch", "1")
        argv = [
            "--stage=scratch",
            "--strategy=multi_worker",
            "--epochs=1",
            *SLICE,
            f"--export_dir={export_dir}",
            f"--log_dir={root}/logs",
        ]
        with (
            open(os.path.join(root, "worker0.log"), "w") as log0,
            open(os.path.join(root, "worker1.log"), "w") as log1,
        ):
            workers = [
                _start(
                    argv,
                    env={
                        "TF_CONFIG": json.dumps(
                            {"cluster": cluster, "task": {"type": "worker", "index": index}}
                        ),
                        "TMPDIR": worker_tmp,
                    },
                    log=log,
                )
                for index, log in enumerate((log0, log1))
            ]
            codes = _wait_all(workers, PROCESS_TIMEOUT)
        if codes != [0, 0]:
            for index in range(2):
                with open(os.path.join(root, f"worker{index}.log")) as f:
                    print(f"worker {index}:", f.read()[-3000:], file=sys.stderr)
        self.assertEqual(codes, [0, 0])

        self.assertEqual(os.listdir(os.path.dirname(export_dir)), ["1"])
        report = _report(export_dir)
        self.assertEqual(report["workers"], 2)
        self.assertEqual(report["replicas"], 2)
        self.assertEqual(report["strategy"], "multi_worker")
        served = export.load_serving_model(export_dir)
        self.assertEqual(served.num_classes, 10)
        self.assertEqual(os.listdir(os.path.join(root, "logs", "scratch")), ["1"])
        # (tensorflow-datasets leaves empty tmp*tfds dirs of its own there.)
        leftovers = [name for name in os.listdir(worker_tmp) if name.startswith("kd_tf-")]
        self.assertEqual(leftovers, [], "the non-chief's temporary dirs are removed")


class BackupResumeTest(tf.test.TestCase):
    def test_resume_after_the_last_epoch(self):
        """A run killed after its last epoch (during the export) restores
        the records, the best epoch and its weights without training."""
        backup_dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, backup_dir)
        splits = data.load_splits(
            "mnist",
            "packaged",
            validation_examples=64,
            train_examples=128,
            tfds_data_dir=None,
            idx_dir=None,
        )
        results = []
        for _ in range(2):
            keras.utils.set_random_seed(0)
            model = models.build_model("seed_mlp", splits.image_shape, splits.num_classes)
            model.compile(
                optimizer="adam",
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            )
            epochs, best_epoch = training.fit_and_restore_best(
                model,
                pipelines.training_dataset(splits.train.images, splits.train.labels, 64, seed=0),
                pipelines.evaluation_dataset(
                    splits.validation.images, splits.validation.labels, 64
                ),
                epochs=2,
                steps_per_epoch=2,
                log_dir=os.path.join(backup_dir, "logs"),
                backup_dir=os.path.join(backup_dir, "run"),
            )
            results.append((epochs, best_epoch, model.get_weights()))
        self.assertEqual(backup.resumed_epoch(os.path.join(backup_dir, "run")), 2)
        (first, first_best, first_weights), (second, second_best, second_weights) = results
        self.assertEqual(second, first)
        self.assertEqual(second_best, first_best)
        for one, two in zip(first_weights, second_weights):
            self.assertAllEqual(one, two)

    """A run SIGKILLed during epoch 2 and started again resumes after epoch 1
    and ends as an uninterrupted run does (`compact_cnn`, no dropout)."""

    def test_killed_run_resumes(self):
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root)
        backup_dir = os.path.join(root, "backup")
        export_dir = os.path.join(root, "export")
        argv = [
            "--stage=scratch",
            "--model=compact_cnn",
            "--strategy=default",
            "--epochs=3",
            "--train_examples=1536",
            "--validation_examples=256",
            "--batch_size=32",
            f"--log_dir={root}/logs",
            f"--backup_dir={backup_dir}",
        ]
        metadata = os.path.join(backup_dir, "scratch", "training_metadata.json")
        with open(os.path.join(root, "killed.log"), "w") as log:
            process = _start([*argv, f"--export_dir={export_dir}"], log=log)
            deadline = time.monotonic() + PROCESS_TIMEOUT
            while not os.path.exists(metadata) and process.poll() is None:
                self.assertLess(time.monotonic(), deadline, "no epoch finished in time")
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            process.wait()
        with open(metadata) as f:
            finished = json.load(f)["epoch"]
        self.assertIn(finished, (1, 2), "killed during epoch 2 or 3, not after the run")
        self.assertEqual(
            sorted(os.listdir(root)), ["backup", "killed.log", "logs"], "no export, no debris"
        )

        resumed = subprocess.run(
            [sys.executable, "-m", "kd_tf.main", *argv, f"--export_dir={export_dir}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
            check=False,
        )
        self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])
        report = _report(export_dir)
        self.assertEqual(report["resumed_from_epoch"], finished)
        self.assertFalse(os.path.exists(os.path.join(backup_dir, "scratch")))

        reference_dir = os.path.join(root, "reference")
        reference = stages.run(_settings(*argv, f"--export_dir={reference_dir}"))
        self.assertEqual(reference["resumed_from_epoch"], 0)
        self.assertLen(report["epochs"], 3)
        self.assertEqual(report["best_epoch"], reference["best_epoch"])
        for got, want in zip(report["epochs"], reference["epochs"]):
            self.assertEqual(got["epoch"], want["epoch"])
            self.assertAllClose(got["val_accuracy"], want["val_accuracy"], atol=1e-6)
        self.assertAllClose(report["test_accuracy"], reference["test_accuracy"], atol=0.002)


if __name__ == "__main__":
    tf.test.main()
