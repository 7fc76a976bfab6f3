"""Progress of long work: how much is done, of how much, and the time left.

Attached to a terminal (stderr a TTY), a `tqdm` progress bar on stderr
(stdout stays the results', e.g. `predict`'s lines); otherwise a log line
every `LOG_SECONDS` ("scanning photos/train: 12000 of 347000 images, 0:01:23
left"), and one at the end when the work took that long. Work that is over
within `LOG_SECONDS` logs nothing.

Used by the scan of a data set's files (`kd_tf.data.scan`), the teacher's
logits pass (`kd_tf.logits_cache`), the measurement of a split through a
model (`SplitReading.map_batches`) and TFLite's int8 calibration and
measurement (`kd_tf.lite`).

Usage:

```python
with progress.Progress("teacher logits", total=len(split) * views, unit="views") as shown:
    for images in batches:
        ...
        shown.add(len(images))
```
"""

import datetime
import sys
import time

import tqdm
from absl import logging

# Seconds between two log lines when not attached to a terminal.
LOG_SECONDS = 10.0


class Progress:
    """Counts of finished units of some work (see the module doc).

    Args:
        what: what the work is, e.g. "scanning photos/train".
        total: how many units there are, or None when unknown.
        unit: what a unit is, e.g. "images".
        terminal: draw a bar (True) or log (False); None: whether stderr is
            a terminal.
        clock: seconds, monotonic (`time.monotonic`).
    """

    def __init__(self, what, total=None, unit="images", *, terminal=None, clock=time.monotonic):
        self.what, self.total, self.unit = what, total, unit
        self.done = 0
        self._clock = clock
        self._started = self._logged = clock()
        if terminal is None:
            terminal = sys.stderr.isatty()
        self._bar = None
        if terminal:
            self._bar = tqdm.tqdm(total=total, desc=what, unit=f" {unit}", file=sys.stderr,
                                  leave=False, dynamic_ncols=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def add(self, count=1):
        """Counts `count` more units done."""
        self.done += int(count)
        if self._bar is not None:
            self._bar.update(int(count))
            return
        now = self._clock()
        if now - self._logged >= LOG_SECONDS:
            self._logged = now
            logging.info("%s: %s", self.what, self.describe(now))

    def describe(self, now):
        """`"12000 of 347000 images, 0:01:23 left"` (without a total: the rate)."""
        elapsed = max(now - self._started, 1e-9)
        if self.total is None:
            return f"{self.done} {self.unit}, {self.done / elapsed:.0f} a second"
        left = (self.total - self.done) * elapsed / max(self.done, 1)
        return f"{self.done} of {self.total} {self.unit}, {_duration(left)} left"

    def close(self):
        """Ends the bar, or logs the total when the work took `LOG_SECONDS` or more."""
        if self._bar is not None:
            self._bar.close()
            return
        elapsed = self._clock() - self._started
        if elapsed >= LOG_SECONDS:
            logging.info("%s: %d %s in %s", self.what, self.done, self.unit, _duration(elapsed))


def _duration(seconds):
    return str(datetime.timedelta(seconds=round(seconds)))
