"""Mixed precision: the policy `auto` picks, float32 outputs, loss scaling and
float32 exports of models trained in 16 bits (fast, synthetic data; one
short training run on 96 real MNIST images)."""

import os
import tempfile

import helpers
import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from kd_tf import (
    command_line,
    cpu,
    distillation,
    distillation_losses,
    export,
    models,
    precision,
    stages,
)
from kd_tf.errors import ConfigError

IMAGE_SHAPE, CLASSES = (28, 28, 1), 10


def _images(count, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8)


AMX_CPU = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpu(*flags, onednn=True, onednn_max_isa=None):
    return cpu.Cpu("a CPU", frozenset(flags), 2, onednn, onednn_max_isa)


class ResolveTest(tf.test.TestCase):
    def test_auto(self):
        cases = {
            _cpu(*AMX_CPU): "mixed_bfloat16",
            _cpu("avx512f", "amx_bf16"): "mixed_bfloat16",
            _cpu(*AMX_CPU, onednn_max_isa="AVX512_CORE_AMX"): "mixed_bfloat16",
            # oneDNN without AMX (off, or capped below it) has no fast bfloat16.
            _cpu(*AMX_CPU, onednn=False): "float32",
            _cpu(*AMX_CPU, onednn_max_isa="AVX512_CORE_BF16"): "float32",
            _cpu(*AMX_CPU, onednn_max_isa="AVX2"): "float32",
            # AVX-512 BF16 without AMX trained no faster (docs/precision-and-speed.md).
            _cpu("avx512f", "avx512_bf16"): "float32",
            _cpu("avx512f", "avx2"): "float32",
            _cpu(): "float32",
        }
        for machine, expected in cases.items():
            with self.subTest(cpu=machine):
                self.assertEqual(precision.resolve("auto", cpu=machine, gpus=[]), expected)
        for gpus, expected in (
            ([(8, 0)], "mixed_bfloat16"),
            ([(9, 0), (8, 6)], "mixed_bfloat16"),
            ([(7, 5)], "mixed_float16"),
            ([(8, 0), (7, 0)], "mixed_float16"),
        ):
            with self.subTest(gpus=gpus):
                resolved = precision.resolve("auto", cpu=_cpu("avx512_bf16"), gpus=gpus)
                self.assertEqual(resolved, expected)

    def test_what_runs_bfloat16_follows_the_cpu_and_onednn_settings(self):
        cases = (
            (_cpu(*AMX_CPU), "amx"),
            (_cpu(*AMX_CPU, onednn_max_isa="AVX512_CORE_AMX"), "amx"),
            (_cpu(*AMX_CPU, onednn_max_isa="avx512_core_bf16"), "avx512"),
            (_cpu(*AMX_CPU, onednn_max_isa="AVX2"), None),
            (_cpu(*AMX_CPU, onednn=False), "tensorflow"),
            (_cpu("avx2"), "tensorflow"),
            (_cpu("avx2", onednn_max_isa="AVX2"), "tensorflow"),
        )
        for machine, expected in cases:
            with self.subTest(cpu=machine):
                self.assertEqual(machine.bfloat16_kernels, expected)
        environ = {"DNNL_MAX_CPU_ISA": "AVX512_CORE", "TF_ENABLE_ONEDNN_OPTS": "1"}
        self.assertEqual(cpu.describe(environ=environ).onednn_max_isa, "AVX512_CORE")
        capped = _cpu(*AMX_CPU, onednn_max_isa="AVX2")
        with self.assertRaisesRegex(ConfigError, "cannot run on this CPU while ONEDNN_MAX_CPU_ISA"):
            precision.resolve("mixed_bfloat16", cpu=capped, gpus=[])

    def test_explicit_choices_are_kept(self):
        for name in ("float32", "mixed_bfloat16", "mixed_float16"):
            self.assertEqual(precision.resolve(name, cpu=_cpu(), gpus=[(7, 0)]), name)
        with self.assertRaises(ValueError):
            precision.resolve("bfloat16")

    def test_policy_is_restored(self):
        before = keras.config.dtype_policy().name
        with self.assertRaises(RuntimeError), precision.policy("mixed_bfloat16"):
            self.assertEqual(keras.config.dtype_policy().name, "mixed_bfloat16")
            raise RuntimeError
        self.assertEqual(keras.config.dtype_policy().name, before)


class GraphRewriteTest(tf.test.TestCase):
    def test_a_float32_graph_runs_in_bfloat16_within_the_block(self):
        """In bfloat16 where oneDNN runs it, in float32 elsewhere (docs/precision-and-speed.md)."""
        runs_bfloat16 = cpu.describe().bfloat16_kernels
        if runs_bfloat16 is None:
            self.skipTest(helpers.NO_BFLOAT16)
        with precision.policy("float32"):
            model = models.build_model("compact_cnn", IMAGE_SHAPE, CLASSES)
        export_dir = os.path.join(tempfile.mkdtemp(), "export")
        export.export_model(model, export_dir, check_images=_images(16))
        images = _images(256, seed=2)
        exact = export.load_serving_model(export_dir).predict_logits(images)
        with precision.graph_rewrite("float32"):
            unchanged = export.load_serving_model(export_dir).predict_logits(images)
        with precision.graph_rewrite("mixed_bfloat16"):
            rounded = export.load_serving_model(export_dir).predict_logits(images)
        self.assertAllEqual(unchanged, exact)
        if runs_bfloat16 == "tensorflow":
            self.assertAllEqual(rounded, exact)
        else:
            self.assertNotAllEqual(rounded, exact)
            self.assertAllClose(rounded, exact, atol=0.05)
        option = "auto_mixed_precision_onednn_bfloat16"
        self.assertFalse(tf.config.optimizer.get_experimental_options().get(option, False))


@helpers.requires_bfloat16
class MixedModelTest(tf.test.TestCase):
    def _model(self, name, policy):
        with precision.policy(policy):
            return models.build_model(name, IMAGE_SHAPE, CLASSES)

    def test_hidden_layers_in_16_bits_logits_in_float32(self):
        for name in models.MODELS:
            with self.subTest(model=name):
                model = self._model(name, "mixed_bfloat16")
                self.assertEqual(model.get_layer("logits").compute_dtype, "float32")
                self.assertIn("bfloat16", {layer.compute_dtype for layer in model.layers})
                self.assertEqual(model(_images(2)).dtype, "float32")

    def test_float32_copy_holds_the_same_weights(self):
        model = self._model("lenet_bn", "mixed_bfloat16")
        copy = precision.float32_copy(model)
        self.assertEqual({layer.compute_dtype for layer in copy.layers} - {"uint8"}, {"float32"})
        for kept, original in zip(copy.get_weights(), model.get_weights()):
            self.assertAllEqual(kept, original)
        reference = self._model("lenet_bn", "float32")
        reference.set_weights(model.get_weights())
        images = _images(64)
        self.assertAllEqual(copy.predict(images, verbose=0), reference.predict(images, verbose=0))
        mixed = model.predict(images, verbose=0)
        self.assertNotAllEqual(mixed, reference.predict(images, verbose=0))
        self.assertAllClose(mixed, reference.predict(images, verbose=0), atol=0.05)
        float32_model = self._model("seed_mlp", "float32")
        self.assertIs(precision.float32_copy(float32_model), float32_model)

    def test_export_of_a_mixed_model_keeps_the_serving_contract(self):
        model = self._model("compact_cnn", "mixed_bfloat16")
        export_dir = os.path.join(tempfile.mkdtemp(), "export")
        export.export_model(precision.float32_copy(model), export_dir, check_images=_images(32))
        served = export.load_serving_model(export_dir)
        outputs = served.outputs(_images(8, seed=1))
        self.assertEqual(outputs["logits"].dtype, tf.float32)
        self.assertEqual(outputs["probabilities"].dtype, tf.float32)
        self.assertEqual(outputs["classes"].dtype, tf.int64)

    def test_float16_distiller_scales_its_loss(self):
        for policy, scaled in (("mixed_float16", True), ("mixed_bfloat16", False)):
            with self.subTest(policy=policy), precision.policy(policy):
                student = models.build_model("seed_mlp", IMAGE_SHAPE, CLASSES)
                terms = [("kd", distillation_losses.KD(4.0), 1.0)]
                distiller = distillation.Distiller(student, terms, alpha=0.9)
                distiller.compile(optimizer=keras.optimizers.Adam())
                self.assertEqual(
                    isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer), scaled
                )
                labels = tf.constant(np.arange(4) % CLASSES)
                teacher_logits = tf.constant(np.random.default_rng(0).normal(size=(4, CLASSES)))
                images = tf.constant(_images(4))
                result = distiller.test_step(((images, teacher_logits), labels))
                for name in ("loss", "student_loss", "kd_loss"):
                    self.assertEqual(result[name].dtype, "float32", name)


def _graph_nodes(export_dir):
    """Every node of the SavedModel in `export_dir`, read from its
    `saved_model.pb`: the graph's and those of its functions (where the
    model's layers are)."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    (meta_graph,) = saved_model.meta_graphs
    graph = meta_graph.graph_def
    functions = graph.library.function
    return [*graph.node, *(node for function in functions for node in function.node_def)]


def _types(node):
    """The dtypes a node's attributes name (`T`, `DstT`, `dtype`, lists...)."""
    found = set()
    for value in node.attr.values():
        found.update([value.type] if value.HasField("type") else value.list.type)
    return {tf.dtypes.as_dtype(t).name for t in found if t != types_pb2.DT_INVALID}


# oneDNN ISAs (ONEDNN_MAX_CPU_ISA) without bfloat16 kernels.
_ISAS_WITHOUT_BFLOAT16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI")


def _bfloat16_cannot_run():
    """Why TensorFlow cannot run bfloat16 ops in this process, or None.

    TensorFlow sends them to oneDNN on any CPU with AVX-512 (by cpuid), and
    falls back to Eigen without it. `ONEDNN_MAX_CPU_ISA=AVX2`, the way to
    emulate an AVX2-only CPU for oneDNN, leaves oneDNN no bfloat16 kernel on
    such a CPU ("could not create a primitive descriptor"), where a real
    AVX2-only CPU runs them in Eigen (emulate that with
    `TF_ENABLE_ONEDNN_OPTS=0`)."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if (
        isa in _ISAS_WITHOUT_BFLOAT16
        and "avx512f" in cpu.read_cpuinfo()[1]
        and os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0"
    ):
        return (
            f"ONEDNN_MAX_CPU_ISA={isa} on a CPU with AVX-512 leaves TensorFlow's bfloat16 ops "
            "without a oneDNN kernel (set TF_ENABLE_ONEDNN_OPTS=0 to emulate an AVX2-only CPU)"
        )
    return None


class MixedRunExportTest(tf.test.TestCase):
    """A training stage run in mixed_bfloat16 exports a float32 graph (the
    trained weights in float32 layers). What is checked is the graph written
    to disk, not its numbers, so no CPU feature is needed: Keras computes
    bfloat16 on any CPU (oneDNN or Eigen, slower without AVX-512 BF16)."""

    # seed_cnn's compute ops, each in float32 in the export whatever the
    # training (their `T` has no default, so the graph always names it; an op
    # whose default type is float32, e.g. MaxPool, names it only when it is
    # not float32, which the check for 16-bit types finds).
    COMPUTE_OPS = ("Conv2D", "MatMul", "BiasAdd", "Relu")

    def test_the_export_of_a_mixed_bfloat16_run_is_float32(self):
        if reason := _bfloat16_cannot_run():
            self.skipTest(reason)
        root = tempfile.mkdtemp(dir=self.get_temp_dir())
        tree = helpers.write_mnist_tree(os.path.join(root, "mnist"), 64, 64)
        report = stages.run(
            command_line.parse([
                "--stage=scratch", "--model=seed_cnn", "--precision=mixed_bfloat16",
                "--data_source=directory", f"--data_dir={tree}", "--validation_examples=16",
                "--epochs=1", "--batch_size=16", f"--export_dir={root}/export",
                f"--log_dir={root}/logs",
            ])
        )
        self.assertEqual(report["precision"], "mixed_bfloat16")
        nodes = _graph_nodes(report["export_dir"])
        compute = {op: set() for op in self.COMPUTE_OPS}
        for node in nodes:
            if node.op in compute:
                compute[node.op].update(_types(node))
        self.assertEqual(compute, {op: {"float32"} for op in self.COMPUTE_OPS})
        in_16_bits = sorted(
            f"{node.op} {node.name}" for node in nodes if _types(node) & {"bfloat16", "float16"}
        )
        self.assertEqual(in_16_bits, [])


if __name__ == "__main__":
    tf.test.main()
