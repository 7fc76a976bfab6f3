"""Ctrl-C that is never lost, and that says what it left behind.

Python raises `KeyboardInterrupt` wherever the main thread is when SIGINT
arrives; inside a destructor or another callback made from C code (TensorFlow
makes many during training) the exception is printed as "Exception ignored"
and dropped, and training goes on. Within `catching_interrupts()` the signal
is also remembered, and `InterruptCheck` raises it again at the next batch.
Code that fails while the `KeyboardInterrupt` unwinds it (TensorFlow's
tracing, stopped half-way, fails its own assertions) replaces it with
another exception: once the signal was received, any exception leaving a
block below is taken for the Ctrl-C it is.

What is true of a run's outputs when Ctrl-C stops it depends on where it
stopped: the code that knows says so with `outcome(message)`, and a
`KeyboardInterrupt` raised within the block leaves it as
`Interrupted(message)` (the innermost block wins); `outcome_of` reads it back.

Usage:

```python
with interrupts.catching_interrupts():
    with interrupts.outcome("no partial export was written"):
        model.fit(train, epochs=10, callbacks=[interrupts.InterruptCheck()])
        export(model, export_dir)
    with interrupts.outcome(f"the export is complete at {export_dir}"):
        tidy_up()
```
"""

import contextlib
import signal
import threading

import keras

_received = threading.Event()


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what is true of the run's outputs when it came.

    Attributes:
        outcome: e.g. "no partial export was written".
    """

    def __init__(self, outcome):
        super().__init__(outcome)
        self.outcome = outcome


@contextlib.contextmanager
def outcome(message):
    """Within the block, Ctrl-C becomes `Interrupted(message)`, unless a
    block inside it has already said what is true."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt as error:
        raise Interrupted(message) from error
    except Exception as error:
        if not _received.is_set():
            raise
        raise Interrupted(message) from error


def outcome_of(error, default):
    """What `error` (a `KeyboardInterrupt`) says is true, else `default`."""
    return error.outcome if isinstance(error, Interrupted) else default


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
    except Exception as error:
        if not _received.is_set():
            raise
        raise KeyboardInterrupt from error
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
