"""Where training runs: one device, several devices of one machine, or several
machines (`--strategy`, `--cpu_devices`).

`strategy_for(runtime, batch_size)` is what every stage calls first: it splits
the CPU into `cpu_devices` logical devices (before TensorFlow initialises
its devices) and returns the `tf.distribute.Strategy` of `strategy`. Build,
compile and train the model under `strategy.scope()`; `--batch_size` is the
global batch, split evenly across `replicas(strategy)` replicas.

With several workers (`--strategy=multi_worker`) every worker runs the same
program in lock step; only the chief's files count. `worker_dir(strategy,
path)` is `path` on the chief and a temporary directory on the other workers
(TensorFlow's multi-worker guide: every worker saves, since saving may run
collective ops, but only the chief into the real place);
`remove_worker_dirs()` deletes those temporary directories.

Usage:

```python
strategy = distribution.strategy_for(config.runtime, config.optimization.batch_size)
with strategy.scope():
    model = models.build_model(...)
    model.compile(...)
model.fit(...)
export_dir = distribution.worker_dir(strategy, export_dir)
```
"""

import functools
import json
import os
import shutil
import tempfile

import tensorflow as tf
from absl import logging

from kd_tf import choices
from kd_tf.errors import ConfigError, UserError

STRATEGIES = choices.STRATEGIES
# In-memory data sets cannot be sharded by file: every worker builds the same
# seeded pipeline and keeps its part of each global batch (the DATA policy),
# so N workers see exactly the batches one worker would.
SHARD_POLICY = tf.data.experimental.AutoShardPolicy.DATA

_TF_CONFIG_HELP = (
    'set TF_CONFIG on every worker, e.g. TF_CONFIG=\'{"cluster": {"worker": '
    '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\' '
    "(index 1 on the second host); see docs/distributed.md, 'Several machines'"
)
_worker_temp_root = None


def configure_cpu_devices(count):
    """Splits the CPU into `count` logical devices (0 leaves it as one).

    Must run before TensorFlow initialises its devices, i.e. before the
    first op; calling it again with the count already configured is fine.

    Args:
        count: number of logical CPU devices, >= 0.

    Raises:
        UserError: TensorFlow has already initialised its devices with
            another configuration.
    """
    if count == 0:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if configured is not None and len(configured) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        raise ConfigError(
            ("cpu_devices",),
            f"{{0}}={count} comes too late: TensorFlow has already set up its devices "
            f"({len(configured or [None])} CPU device(s)); configure them before the first "
            "TensorFlow op (kd_tf.main does) or start a new process"
        ) from error


def _cluster_from_tf_config():
    """The parsed TF_CONFIG, validated for `multi_worker`."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError(("strategy",), f"{{0}}=multi_worker needs TF_CONFIG: {_TF_CONFIG_HELP}")
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config["cluster"], tf_config["task"]
        task_type, index = task["type"], int(task["index"])
        tasks = cluster[task_type]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"TF_CONFIG is not a valid cluster description ({type(error).__name__}: {error}): "
            f"{_TF_CONFIG_HELP}"
        ) from error
    if not 0 <= index < len(tasks):
        raise UserError(
            f"TF_CONFIG task {task_type}:{index} is not in its cluster of {len(tasks)} "
            f"{task_type} task(s): {_TF_CONFIG_HELP}"
        )
    return tf_config


# The dtypes collective all-reduce ops take.
_COLLECTIVE_DTYPES = (tf.bfloat16, tf.float16, tf.float32, tf.float64, tf.int32, tf.int64)


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`MultiWorkerMirroredStrategy` whose `reduce` works for what Keras 3's
    `fit` asks of it (tensorflow/tensorflow#72388).

    Keras reduces one batch of the training data (`(images, labels)` with
    uint8 images) across replicas before training, to build the model, and
    reduces each step's scalar metrics with `axis=0`. The stock multi-worker
    `reduce` takes neither a nested structure, nor uint8, nor `axis=0` on a
    scalar. Here each leaf is reduced on its own, through float32 where the
    collective ops have no kernel for its dtype, and a scalar is reduced
    across replicas only (`axis=None`), as `MirroredStrategy` does.
    """

    def reduce(self, reduce_op, value, axis):
        parent = super()

        def reduce_leaf(leaf):
            local = self.experimental_local_results(leaf)[0]
            leaf_axis = None if local.shape.rank == 0 else axis
            if local.dtype in _COLLECTIVE_DTYPES:
                return parent.reduce(reduce_op, leaf, leaf_axis)
            as_float = self.run(tf.cast, args=(leaf, tf.float32))
            return tf.cast(parent.reduce(reduce_op, as_float, leaf_axis), local.dtype)

        return tf.nest.map_structure(reduce_leaf, value)


@functools.cache
def _make_strategy(name, cpu_devices):
    """Builds the strategy once per process (a `MultiWorkerMirroredStrategy`
    can only configure the collective ops once)."""
    if name == "multi_worker":
        _cluster_from_tf_config()
        strategy = _MultiWorkerMirroredStrategy()
    else:
        configure_cpu_devices(cpu_devices)
        gpus = tf.config.list_logical_devices("GPU")
        if name == "default" or (name == "auto" and len(gpus) < 2):
            strategy = tf.distribute.get_strategy()
        else:
            devices = gpus or tf.config.list_logical_devices("CPU")
            strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
    logging.info(
        "--strategy=%s: %s, %d replica(s) on %d worker(s)",
        name,
        strategy_name(strategy),
        replicas(strategy),
        workers(strategy),
    )
    return strategy


def strategy_for(runtime, batch_size):
    """The distribution strategy of a run.

    Call it at the start of a stage, before any TensorFlow op.

    - `default`: one device (the first GPU if there is one, else the CPU).
    - `mirrored`: `MirroredStrategy` over all GPUs, or over the
      `cpu_devices` logical CPUs where there is no GPU.
    - `auto`: `mirrored` when more than one GPU is visible, else `default`.
    - `multi_worker`: `MultiWorkerMirroredStrategy` over the cluster in
      `TF_CONFIG` (each worker over its own GPUs, or its CPU).

    Args:
        runtime: a `config.RuntimeConfig` (`strategy`, `cpu_devices`).
        batch_size: the global batch size.

    Returns:
        A `tf.distribute.Strategy`, the same object for the same settings
        within one process.

    Raises:
        UserError: TF_CONFIG is missing or invalid for `multi_worker`, or the
            CPU devices cannot be configured any more.
        ConfigError: `batch_size` does not split evenly across the replicas.
    """
    strategy = _make_strategy(runtime.strategy, runtime.cpu_devices)
    count = replicas(strategy)
    if batch_size % count:
        raise ConfigError(
            ("batch_size",),
            f"{{0}}={batch_size} (the global batch) does not split evenly across {count} "
            f"replicas: pass a multiple of {count}",
        )
    return strategy


def steps_per_execution(requested, steps_per_epoch):
    """The training steps of one call of the compiled step: the largest
    divisor of `steps_per_epoch` up to `requested`, or 1 inside the scope of
    a strategy of several replicas.

    Keras 3.15 runs `steps_per_execution` steps per call whatever is left of
    the epoch, so a count that does not divide the epoch's steps runs into
    the next epoch's batches: with 8 steps a call and epochs of 4 steps,
    epoch 1 trained 8 steps and the last epoch none, and each epoch's record,
    the best epoch and the backups described other steps than their epoch's.

    With TensorFlow 2.21 and Keras 3.15, `fit` with `steps_per_execution > 1`
    under `MirroredStrategy` fails in Keras's multi-step loop ("You must feed a
    value for placeholder tensor 'while/cond/Placeholder_1'"), for plain Keras
    models too; one step per call trains the same weights, a little slower.
    """
    strategy = tf.distribute.get_strategy()
    if requested > 1 and replicas(strategy) > 1:
        logging.warning(
            "steps_per_execution=%d is not supported by Keras under %s: training with 1",
            requested,
            strategy_name(strategy),
        )
        return 1
    steps = max(1, steps_per_epoch)
    chosen = max(d for d in range(1, min(requested, steps) + 1) if steps % d == 0)
    if chosen != requested:
        logging.info(
            "steps_per_execution=%d does not divide the %d steps of an epoch: training with %d "
            "(a call must not run into the next epoch)",
            requested, steps, chosen,
        )
    return chosen


def strategy_name(strategy):
    """The `--strategy` value that names `strategy` (what `auto` resolved to)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    return "default"


def replicas(strategy):
    """Replicas training in sync, over all workers."""
    return strategy.num_replicas_in_sync


def _task(strategy):
    """`(task_type, task_id, cluster_spec_dict)` of a multi-worker strategy,
    `(None, None, {})` otherwise."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, None, {}
    return resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict()


def workers(strategy):
    """Machines (TF_CONFIG `chief` and `worker` tasks) taking part; 1 unless
    multi-worker."""
    _, _, cluster = _task(strategy)
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def is_chief(strategy):
    """Whether this process writes the results: always, except on the
    workers of a multi-worker cluster other than the chief (the `chief`
    task, or worker 0 when the cluster has no `chief`)."""
    task_type, task_id, cluster = _task(strategy)
    if task_type is None:
        return True
    return task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in cluster
    )


def task_name(strategy):
    """`"<type>-<index>"` of this worker, `"chief"` without a cluster."""
    task_type, task_id, _ = _task(strategy)
    return "chief" if task_type is None else f"{task_type}-{task_id}"


def worker_dir(strategy, path):
    """Where this process writes what belongs at `path`.

    Args:
        strategy: the stage's strategy.
        path: a directory the results go to.

    Returns:
        `path` on the chief; on another worker a fresh path inside a
        temporary directory of this process, removed by
        `remove_worker_dirs()`.
    """
    global _worker_temp_root
    if is_chief(strategy):
        return path
    if _worker_temp_root is None:
        _worker_temp_root = tempfile.mkdtemp(prefix=f"kd_tf-{task_name(strategy)}-")
    name = os.path.basename(os.path.normpath(path))
    return os.path.join(tempfile.mkdtemp(dir=_worker_temp_root), name)


def remove_worker_dirs():
    """Deletes the temporary directories `worker_dir` handed out."""
    global _worker_temp_root
    if _worker_temp_root is not None:
        shutil.rmtree(_worker_temp_root, ignore_errors=True)
        _worker_temp_root = None


def distributable(dataset):
    """`dataset` with the auto-shard policy for in-memory data (`SHARD_POLICY`)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = SHARD_POLICY
    return dataset.with_options(options)
