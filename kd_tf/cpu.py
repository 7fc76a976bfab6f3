"""The CPU a run is on, and the threads, oneDNN and precision kd_tf chooses for it.

Before TensorFlow loads, `prefer_onednn` turns TensorFlow's oneDNN kernels on
(`TF_ENABLE_ONEDNN_OPTS=1`) on an x86 CPU with AVX2 where TensorFlow would
leave them off (one without AVX-512 VNNI, AVX-512 BF16 or AMX), unless the
variable is set: with oneDNN's AVX2 kernels (`ONEDNN_MAX_CPU_ISA=AVX2` on
the 2-core Xeon) a teacher epoch took 23 % less CPU time than with
TensorFlow's own (Eigen) kernels, and the logits pass 21 % less.

At start (`kd_tf.main`), `describe()` reads the CPU's model name and feature
flags (`/proc/cpuinfo`), the cores this process may run on
(`os.sched_getaffinity`) and what oneDNN may use (`TF_ENABLE_ONEDNN_OPTS`,
`ONEDNN_MAX_CPU_ISA`); `choose` picks, from that alone:

- `precision`: what `--precision=auto` takes on this CPU: `mixed_bfloat16`
  only where oneDNN runs bfloat16 on AMX (the `amx_bf16` flag, oneDNN on, and
  no `ONEDNN_MAX_CPU_ISA` below AMX: with `ONEDNN_MAX_CPU_ISA=AVX2` on an
  AVX-512 CPU, bfloat16 ops find no oneDNN kernel at all), else `float32`
  (with AVX-512 BF16 but no AMX bfloat16 trained no faster);
- `intra_op_threads`: one per core (TensorFlow's default); `inter_op_threads`:
  1 on small machines (`FEW_CORES`), else one per core. tf.data keeps its
  shared pool: a private one (`threading.private_threadpool_size`) cost the
  logits pass 9 % more CPU time on 2 cores.

`configure` hands the threads to TensorFlow, which takes them only before its
runtime starts; a process that already ran TensorFlow keeps its own, and the
choices then record what is in effect. `summary` is the one log line and
`as_json` the `cpu` field of `report.json`. The figures behind each choice are
in docs/precision-and-speed.md.

Usage:

```python
cpu.prefer_onednn()            # before TensorFlow is imported
cpu.setup()                    # before TensorFlow runs anything: the threads apply
report["cpu"] = cpu.for_run()  # in a stage: logged in one line, for report.json
```
"""

import dataclasses
import os
import platform

from absl import logging

# The flags that decide a CPU's kind, from the strongest.
KINDS = (
    ("amx_bf16", "AMX"),
    ("avx512_bf16", "AVX-512 BF16"),
    ("avx512f", "AVX-512"),
    ("avx2", "AVX2"),
)
CAPABILITY_FLAGS = tuple(flag for flag, _ in KINDS)
# TensorFlow turns oneDNN on by default on CPUs with one of these (TF 2.9+);
# `TF_ENABLE_ONEDNN_OPTS` overrides it either way.
ONEDNN_DEFAULT_FLAGS = (
    "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
)
# On at most this many cores, one inter-op thread (the pool running a step's
# independent ops side by side): on 2 cores a teacher epoch took 8 % less CPU
# time than with TensorFlow's default, one per core, in the same wall time,
# and the logits pass the same. More cores keep the default (not measured).
FEW_CORES = 2


@dataclasses.dataclass(frozen=True)
class Cpu:
    """What kd_tf knows of the CPU.

    Attributes:
        model: the model name (`/proc/cpuinfo`, else `platform.processor()`).
        flags: the feature flags of `CAPABILITY_FLAGS` it has, plus those of
            `ONEDNN_DEFAULT_FLAGS`.
        cores: the cores this process may run on.
        onednn: whether TensorFlow runs its ops through oneDNN.
        onednn_max_isa: `ONEDNN_MAX_CPU_ISA` (or its older name
            `DNNL_MAX_CPU_ISA`), or None.
    """

    model: str
    flags: frozenset
    cores: int
    onednn: bool
    onednn_max_isa: str | None = None

    @property
    def kind(self):
        """"AMX", "AVX-512 BF16", "AVX-512", "AVX2" or "older": its strongest feature."""
        return next((kind for flag, kind in KINDS if flag in self.flags), "older")

    @property
    def bfloat16_kernels(self):
        """What runs bfloat16 ops here: "amx" (oneDNN on AMX), "avx512"
        (oneDNN on AVX-512 without AMX), "tensorflow" (TensorFlow's own
        kernels: no AVX-512F, or oneDNN off; its bfloat16 graph rewrite then
        changes nothing), or None: nothing, as TensorFlow hands bfloat16 to
        oneDNN (AVX-512F, `IsBF16SupportedByOneDNNOnThisCPU`) but
        `ONEDNN_MAX_CPU_ISA` caps oneDNN below AVX512_CORE, and oneDNN then
        aborts the process."""
        if not self.onednn or "avx512f" not in self.flags:
            return "tensorflow"
        # oneDNN's ISA names: SSE41, AVX, AVX2, AVX2_VNNI(_2) below AVX-512,
        # AVX512_CORE..., AVX10_..., with AMX in the names of those that use AMX.
        isa = (self.onednn_max_isa or "ALL").upper()
        if isa not in ("ALL", "DEFAULT") and not isa.startswith(("AVX512", "AVX10")):
            return None
        amx = isa in ("ALL", "DEFAULT") or "AMX" in isa
        return "amx" if amx and "amx_bf16" in self.flags else "avx512"


@dataclasses.dataclass(frozen=True)
class Choices:
    """What kd_tf runs with on a `Cpu` (see the module doc)."""

    precision: str
    intra_op_threads: int
    inter_op_threads: int


def read_cpuinfo(path="/proc/cpuinfo"):
    """`(model name, set of flags)` from `path` (`("", set())` where there is none)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return "", set()
    values = [line.split(":", 1) for line in lines if ":" in line]
    model = next((value.strip() for key, value in values if key.strip() == "model name"), "")
    flags = {flag for key, value in values if key.strip() == "flags" for flag in value.split()}
    return model, flags


def describe(cpuinfo="/proc/cpuinfo", environ=None):
    """The `Cpu` this process runs on (`environ`: default `os.environ`)."""
    environ = os.environ if environ is None else environ
    model, flags = read_cpuinfo(cpuinfo)
    setting = environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower()
    if setting in ("0", "1", "false", "true"):
        onednn = setting in ("1", "true")
    else:
        onednn = any(flag in flags for flag in ONEDNN_DEFAULT_FLAGS)
    return Cpu(
        model=model or platform.processor() or "unknown",
        flags=frozenset(flags & {*CAPABILITY_FLAGS, *ONEDNN_DEFAULT_FLAGS}),
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        onednn=onednn,
        onednn_max_isa=environ.get("ONEDNN_MAX_CPU_ISA", environ.get("DNNL_MAX_CPU_ISA")) or None,
    )


def prefer_onednn(cpuinfo="/proc/cpuinfo", environ=None):
    """Sets `TF_ENABLE_ONEDNN_OPTS=1` in `environ` (default `os.environ`) on
    an x86 CPU with AVX2, unless it is set (see the module doc: TensorFlow
    itself turns oneDNN on only with `ONEDNN_DEFAULT_FLAGS`); TensorFlow
    reads it when it loads."""
    environ = os.environ if environ is None else environ
    _, flags = read_cpuinfo(cpuinfo)
    if "TF_ENABLE_ONEDNN_OPTS" not in environ and "avx2" in flags:
        environ["TF_ENABLE_ONEDNN_OPTS"] = "1"


def choose(machine):
    """The `Choices` for a `Cpu` (see the module doc)."""
    return Choices(
        precision="mixed_bfloat16" if machine.bfloat16_kernels == "amx" else "float32",
        intra_op_threads=machine.cores,
        inter_op_threads=1 if machine.cores <= FEW_CORES else machine.cores,
    )


def configure(choices):
    """Gives TensorFlow `choices`' threads if its runtime has not started;
    returns the `Choices` in effect."""
    # Imported here, not at the top: `prefer_onednn` runs before TensorFlow loads.
    import tensorflow as tf

    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(choices.intra_op_threads)
        threading.set_inter_op_parallelism_threads(choices.inter_op_threads)
    except RuntimeError:  # the runtime has started: its pools stay as they are
        return dataclasses.replace(
            choices,
            intra_op_threads=threading.get_intra_op_parallelism_threads(),
            inter_op_threads=threading.get_inter_op_parallelism_threads(),
        )
    return choices


def summary(machine, choices):
    """The one log line: the CPU and what was chosen for it (0 threads: TensorFlow's default)."""
    features = ", ".join(kind for flag, kind in KINDS if flag in machine.flags) or "no AVX2"
    onednn = f"oneDNN {'on' if machine.onednn else 'off'}"
    if machine.onednn_max_isa:
        onednn += f" up to {machine.onednn_max_isa}"
    return (
        f"cpu: {machine.model} ({features}), {machine.cores} cores, {onednn}: "
        f"precision auto = {choices.precision}, intra-op threads {choices.intra_op_threads}, "
        f"inter-op threads {choices.inter_op_threads}"
    )


def as_json(machine, choices):
    """The `cpu` field of `report.json`."""
    return {
        "model": machine.model,
        "kind": machine.kind,
        "flags": sorted(machine.flags),
        "cores": machine.cores,
        "onednn": machine.onednn,
        "onednn_max_isa": machine.onednn_max_isa,
        "choices": dataclasses.asdict(choices),
    }


def setup():
    """Describes this process's CPU and gives TensorFlow the threads chosen
    for it (`configure`); returns `(Cpu, Choices in effect)`."""
    machine = describe()
    return machine, configure(choose(machine))


def for_run():
    """`setup()`, logged in one line (`summary`); returns the `cpu` field of
    a stage's report (`as_json`)."""
    machine, choices = setup()
    logging.info("%s", summary(machine, choices))
    return as_json(machine, choices)
