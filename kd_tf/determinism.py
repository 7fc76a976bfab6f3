"""Reproducible runs: one seed for every random choice, and deterministic ops.

`keras.utils.set_random_seed` seeds Python, NumPy and TensorFlow (and so the
Keras seed generators behind weight initialisation and dropout); the input
pipelines take the same seed for shuffling and augmentation. TensorFlow may
still pick ops whose results depend on thread scheduling (reductions, the
order in which `tf.data` delivers parallel work);
`tf.config.experimental.enable_op_determinism` rules those out, so two runs
with the same flags on the same machine give bitwise-identical weights.

Op determinism is process-wide and cannot be switched off again through the
public API, so `--nodeterministic` only leaves it as it was.

Usage:

```python
determinism.make_reproducible(settings.seed, deterministic=settings.deterministic)
```
"""

import keras
import tensorflow as tf


def make_reproducible(seed, *, deterministic=True):
    """Seed every random generator and, optionally, make ops deterministic.

    Call it before building models and pipelines.

    Args:
        seed: The run's seed (`--seed`).
        deterministic: Whether to turn on TensorFlow's op determinism
            (`--deterministic`).
    """
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
