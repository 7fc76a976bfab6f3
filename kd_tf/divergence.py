"""Stop a diverging run and say so.

`DivergenceMonitor` is Keras's `TerminateOnNaN` (training stops at the first
batch whose loss is NaN or infinite, and every callback still runs its
`on_epoch_end` and `on_train_end`), remembering where that happened so that
the caller can refuse to export the model with a message the user can act on,
and `backup.TrainingBackup` can leave the diverged epoch out of the backup.

Usage:

```python
monitor = divergence.DivergenceMonitor()
model.fit(train, epochs=10, callbacks=[monitor])
monitor.raise_if_diverged()
```
"""

import math

import keras

from kd_tf.errors import ConfigError


class DivergenceMonitor(keras.callbacks.TerminateOnNaN):
    """`TerminateOnNaN` that records the epoch and step where the loss broke.

    Attributes:
        diverged_at: `None`, or `(epoch, step, loss)` of the first non-finite
            training loss, epoch and step numbered from 1.
    """

    def __init__(self):
        super().__init__()
        self.diverged_at = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if self.diverged_at is None and loss is not None and not math.isfinite(float(loss)):
            self.diverged_at = (self._epoch + 1, batch + 1, float(loss))
        super().on_batch_end(batch, logs)

    def raise_if_diverged(self, backup_dir=None, backed_up_epochs=0):
        """Raise `UserError` if training diverged.

        Args:
            backup_dir: the run's backup directory, if any.
            backed_up_epochs: the finished epochs it holds (the diverged one
                is never among them); a rerun with another learning rate is a
                run of its own, so the message says to remove them.

        Raises:
            ConfigError: The training loss became NaN or infinite (the
                learning rate is too high).
        """
        if self.diverged_at is None:
            return
        epoch, step, loss = self.diverged_at
        kept = ""
        if backup_dir and backed_up_epochs:
            kept = (
                f"; {backup_dir} keeps epochs 1-{backed_up_epochs} of this run: remove it "
                "before rerunning with another {0}"
            )
        raise ConfigError(
            ("learning_rate",),
            f"training diverged at epoch {epoch} (loss {loss} at step {step}): lower "
            "{0}, e.g. 10 times; nothing was exported" + kept,
        )
