"""Mixed precision: which Keras dtype policy a run trains and predicts in.

`resolve("auto")` picks, from what the machine can run fast:

- `mixed_bfloat16` on a GPU of compute capability 8.0 or more, or, without a
  GPU, where oneDNN runs bfloat16 on AMX (`cpu.Cpu.bfloat16_kernels`: the
  `amx_bf16` flag, oneDNN on, no `ONEDNN_MAX_CPU_ISA` below AMX). A CPU with
  AVX-512 BF16 but no AMX keeps float32: on such a CPU (an AMD EPYC) kd_tf's
  models trained no faster in bfloat16 (docs/precision-and-speed.md);
- `mixed_float16` on older GPUs (Keras's `compile` then wraps the optimiser
  in a `LossScaleOptimizer`, which scales the loss dynamically);
- `float32` elsewhere.

Under a mixed policy the layers compute in 16 bits and keep float32 weights;
the models' `logits` layer, the softmax, the losses and the metrics stay in
float32. The student stage's cached teacher logits are computed under the
policy too (`graph_rewrite`) where oneDNN runs bfloat16 (a CPU with AVX-512),
in float32 elsewhere. Exports are float32 graphs of the trained weights (`float32_copy`),
so they keep the serving contract exactly, run on any hardware and convert
to TFLite, whatever the training precision.

Usage:

```python
name = precision.resolve("auto")            # e.g. "mixed_bfloat16"
with precision.policy(name):
    model = models.build_model("lenet_bn", (28, 28, 1), 10)
    model.compile(...)
```
"""

import contextlib

import keras
import tensorflow as tf
from absl import logging

from kd_tf import choices
from kd_tf import cpu as cpu_lib
from kd_tf.errors import ConfigError

PRECISIONS = choices.PRECISIONS
# GPUs from this compute capability (Ampere) on have fast bfloat16.
BF16_GPU_CAPABILITY = (8, 0)
# Grappler's auto mixed precision, which runs a float32 graph (a teacher's
# SavedModel) in a policy's 16-bit type: oneDNN bfloat16 on CPUs, float16 on GPUs.
_GRAPH_REWRITES = {
    "mixed_bfloat16": "auto_mixed_precision_onednn_bfloat16",
    "mixed_float16": "auto_mixed_precision",
}


def gpu_capabilities():
    """`(major, minor)` compute capability of every visible GPU."""
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(tuple(details.get("compute_capability", (0, 0))))
    return capabilities


def resolve(requested, *, cpu=None, gpus=None):
    """The dtype policy name for `requested` (one of `PRECISIONS`).

    Args:
        requested: "auto" or a policy name, returned as it is.
        cpu: a `cpu.Cpu`; default: `cpu.describe()`.
        gpus: GPU compute capabilities; default: `gpu_capabilities()`.

    Returns:
        "float32", "mixed_bfloat16" or "mixed_float16".

    Raises:
        ConfigError: "mixed_bfloat16" without a GPU where bfloat16 cannot
            run (`cpu.Cpu.bfloat16_kernels` is None).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    gpus = gpu_capabilities() if gpus is None else gpus
    if gpus:
        if requested != "auto":
            return requested
        if all(capability >= BF16_GPU_CAPABILITY for capability in gpus):
            return "mixed_bfloat16"
        return "mixed_float16"
    machine = cpu_lib.describe() if cpu is None else cpu
    if requested == "mixed_bfloat16" and machine.bfloat16_kernels is None:
        raise ConfigError(
            ("precision",),
            "{0}=mixed_bfloat16 cannot run on this CPU while ONEDNN_MAX_CPU_ISA caps oneDNN "
            "below AVX512_CORE (TensorFlow hands bfloat16 to oneDNN here): unset it or pass "
            "{0}=float32",
        )
    if requested != "auto":
        return requested
    return cpu_lib.choose(machine).precision


def float32_copy(model):
    """`model` itself if it computes in float32, else a float32 clone of it
    holding the same weights (mixed-precision layers keep float32 weights, so
    nothing is rounded): what kd_tf exports, so that an export is a float32
    graph whatever the training precision."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model

    def as_float32(layer):
        layer_config = layer.get_config()
        if not isinstance(layer, keras.layers.InputLayer):
            layer_config["dtype"] = "float32"
        return layer.__class__.from_config(layer_config)

    copy = keras.models.clone_model(model, clone_function=as_float32)
    copy.set_weights(model.get_weights())
    return copy


def resolve_for_run(requested):
    """`resolve(requested)`, logged: what a run trains in."""
    name = resolve(requested)
    logging.info("precision: %s (asked for %s)", name, requested)
    return name


@contextlib.contextmanager
def graph_rewrite(name):
    """Within the block, the float32 graphs TensorFlow runs for the first time
    (e.g. a loaded teacher's signature) are rewritten to compute in the 16-bit
    type of policy `name` (see `_GRAPH_REWRITES`); nothing changes for float32,
    nor for bfloat16 where oneDNN does not run it (`cpu.Cpu.bfloat16_kernels`;
    logged).
    The student stage computes its cached teacher logits so."""
    option = _GRAPH_REWRITES.get(name)
    if name == "mixed_bfloat16" and cpu_lib.describe().bfloat16_kernels not in ("amx", "avx512"):
        logging.info("teacher logits in float32: oneDNN runs no bfloat16 on this CPU")
        option = None
    if option is None:
        yield
        return
    previous = tf.config.optimizer.get_experimental_options().get(option, False)
    tf.config.optimizer.set_experimental_options({option: True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({option: previous})


@contextlib.contextmanager
def policy(name):
    """Within the block, new layers and models take the dtype policy `name`."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
