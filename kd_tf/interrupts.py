"""Ctrl-C that is never lost.

Python raises `KeyboardInterrupt` wherever the main thread is when SIGINT
arrives; inside a destructor or another callback made from C code (TensorFlow
makes many during training) the exception is printed as "Exception ignored"
and dropped, and training goes on. Within `catching_interrupts()` the signal
is also remembered, and `InterruptCheck` raises it again at the next batch.

Usage:

```python
with interrupts.catching_interrupts():
    model.fit(train, epochs=10, callbacks=[interrupts.InterruptCheck()])
```
"""

import contextlib
import signal
import threading

import keras

_received = threading.Event()


@contextlib.contextmanager
def catching_interrupts():
    """Within the block, SIGINT raises `KeyboardInterrupt` and is remembered
    for `InterruptCheck`. Outside the main thread the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(signum, frame):
        _received.set()
        raise KeyboardInterrupt

    _received.clear()
    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _received.clear()


class InterruptCheck(keras.callbacks.Callback):
    """Raises `KeyboardInterrupt` at the end of the next training or
    validation batch once SIGINT was received, in case the first one was
    dropped."""

    def on_train_batch_end(self, batch, logs=None):
        if _received.is_set():
            raise KeyboardInterrupt

    def on_test_batch_end(self, batch, logs=None):
        self.on_train_batch_end(batch, logs)
