"""What kd_tf chooses for the CPU it runs on, on the three kinds of CPU it
runs on (their /proc/cpuinfo mocked) and under the environment variables
that change what oneDNN runs; threads given to TensorFlow in a fresh process;
the `cpu` field of a stage's report, true of the tests' own process."""

import dataclasses
import json
import os
import subprocess
import sys

import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port

from kd_tf import cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The /proc/cpuinfo flags of the three CPU kinds, abridged to what matters.
CPUS = {
    "Intel(R) Xeon(R) Platinum 8480+": (
        "avx avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"
    ),
    "AMD EPYC 9R14 96-Core Processor": "avx avx2 avx512f avx512_vnni avx512_bf16",
    "AMD EPYC 7R13 Processor": "avx avx2 fma",
}


def _cpuinfo(directory, model, cores=2):
    path = os.path.join(directory, "cpuinfo")
    with open(path, "w") as f:
        for number in range(cores):
            f.write(f"processor\t: {number}\nmodel name\t: {model}\n")
            f.write(f"flags\t\t: fpu {CPUS[model]}\n\n")
    return path


class ChoicesTest(tf.test.TestCase):
    def describe(self, model, **environ):
        return cpu.describe(_cpuinfo(self.get_temp_dir(), model), environ)

    def test_each_cpu_kind(self):
        expected = {
            "Intel(R) Xeon(R) Platinum 8480+": ("AMX", True, "mixed_bfloat16"),
            "AMD EPYC 9R14 96-Core Processor": ("AVX-512 BF16", True, "float32"),
            # TensorFlow leaves oneDNN off on a CPU without AVX-512 VNNI, BF16 or AMX.
            "AMD EPYC 7R13 Processor": ("AVX2", False, "float32"),
        }
        for model, (kind, onednn, precision) in expected.items():
            with self.subTest(cpu=model):
                machine = self.describe(model)
                described = (machine.model, machine.kind, machine.onednn)
                self.assertEqual(described, (model, kind, onednn))
                choices = cpu.choose(machine)
                self.assertEqual(choices.precision, precision)
                self.assertEqual(choices.intra_op_threads, machine.cores)
                self.assertEqual(choices.inter_op_threads, 1)
                line = cpu.summary(machine, choices)
                self.assertStartsWith(line, f"cpu: {model} ({kind}")
                self.assertIn(f"precision auto = {precision}", line)

    def test_no_bfloat16_where_onednn_cannot_run_it_on_amx(self):
        amx = "Intel(R) Xeon(R) Platinum 8480+"
        for environ, precision in (
            ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "float32"),
            ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "float32"),
            ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "float32"),
            ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, "mixed_bfloat16"),
            ({"ONEDNN_MAX_CPU_ISA": "ALL"}, "mixed_bfloat16"),
        ):
            with self.subTest(environ=environ):
                self.assertEqual(cpu.choose(self.describe(amx, **environ)).precision, precision)
        capped = self.describe(amx, ONEDNN_MAX_CPU_ISA="AVX2")
        self.assertIn("oneDNN on up to AVX2", cpu.summary(capped, cpu.choose(capped)))
        forced = self.describe("AMD EPYC 7R13 Processor", TF_ENABLE_ONEDNN_OPTS="1")
        self.assertTrue(forced.onednn)
        self.assertEqual(cpu.choose(forced).precision, "float32")

    def test_onednn_is_turned_on_with_avx2_unless_the_user_said_otherwise(self):
        for model in CPUS:
            with self.subTest(cpu=model):
                environ = {}
                cpu.prefer_onednn(_cpuinfo(self.get_temp_dir(), model), environ)
                self.assertEqual(environ, {"TF_ENABLE_ONEDNN_OPTS": "1"})
                self.assertTrue(cpu.describe(_cpuinfo(self.get_temp_dir(), model), environ).onednn)
        environ = {"TF_ENABLE_ONEDNN_OPTS": "0"}
        cpu.prefer_onednn(_cpuinfo(self.get_temp_dir(), "AMD EPYC 7R13 Processor"), environ)
        self.assertEqual(environ, {"TF_ENABLE_ONEDNN_OPTS": "0"})
        environ = {}
        cpu.prefer_onednn(os.path.join(self.get_temp_dir(), "missing"), environ)
        self.assertEqual(environ, {})

    def test_more_cores_keep_one_inter_op_thread_per_core(self):
        machine = dataclasses.replace(self.describe("AMD EPYC 7R13 Processor"), cores=16)
        self.assertEqual(cpu.choose(machine), cpu.Choices("float32", 16, 16))

    def test_cpuinfo_is_read_and_its_absence_tolerated(self):
        model, flags = cpu.read_cpuinfo(_cpuinfo(self.get_temp_dir(), "AMD EPYC 7R13 Processor"))
        self.assertEqual((model, flags), ("AMD EPYC 7R13 Processor", {"fpu", "avx", "avx2", "fma"}))
        missing = os.path.join(self.get_temp_dir(), "missing")
        self.assertEqual(cpu.read_cpuinfo(missing), ("", set()))
        machine = cpu.describe(missing, {})
        self.assertEqual((machine.kind, machine.onednn), ("older", False))
        self.assertEqual(cpu.choose(machine).precision, "float32")

    def test_report_field(self):
        machine = self.describe("AMD EPYC 9R14 96-Core Processor")
        field = cpu.as_json(machine, cpu.choose(machine))
        self.assertEqual(field["kind"], "AVX-512 BF16")
        self.assertEqual(field["flags"], ["avx2", "avx512_bf16", "avx512_vnni", "avx512f"])
        self.assertEqual(field["choices"]["precision"], "float32")
        json.dumps(field)


class InEffectTest(tf.test.TestCase):
    def test_the_recorded_onednn_setting_is_what_tensorflow_runs(self):
        # tests/conftest.py sets oneDNN up before TensorFlow loads, as
        # kd_tf.main does: the stages run in this process record what runs.
        self.assertEqual(_pywrap_util_port.IsMklEnabled(), cpu.describe().onednn)


class ConfigureTest(tf.test.TestCase):
    def test_a_fresh_process_takes_the_threads(self):
        code = (
            "from kd_tf import cpu; import tensorflow as tf; "
            "chosen = cpu.configure(cpu.Choices('float32', 1, 1)); tf.constant(1.0) + 1.0; "
            "threads = tf.config.threading; print(chosen.intra_op_threads, "
            "threads.get_intra_op_parallelism_threads(), "
            "threads.get_inter_op_parallelism_threads())"
        )
        environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        output = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO, env=environ, capture_output=True, text=True, check=True,
        ).stdout
        self.assertEqual(output.split(), ["1", "1", "1"])

    def test_a_started_runtime_keeps_its_threads_and_says_so(self):
        tf.constant(1.0) + 1.0  # the runtime has started
        in_effect = (
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        )
        wanted = cpu.Choices("float32", in_effect[0] + 3, in_effect[1] + 3)
        chosen = cpu.configure(wanted)
        self.assertEqual((chosen.intra_op_threads, chosen.inter_op_threads), in_effect)
