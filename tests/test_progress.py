"""kd_tf.progress: counts and time left, logged every few seconds away from a
terminal, drawn as a bar on one (a fake clock; no wall-clock bound)."""

import contextlib
import io

import tensorflow as tf

from kd_tf import progress


class Clock:
    """A clock the test moves."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class ProgressTest(tf.test.TestCase):
    def test_a_log_line_every_few_seconds_with_the_time_left(self):
        clock = Clock()
        with self.assertLogs("absl", "INFO") as logged:
            with progress.Progress("scanning photos", 1000, terminal=False, clock=clock) as shown:
                shown.add(100)  # at once: no line
                clock.now += progress.LOG_SECONDS
                shown.add(150)  # 250 in 10 s: 750 left, 30 s
                clock.now += 1
                shown.add(10)  # within the interval: no line
                clock.now += progress.LOG_SECONDS
                shown.add(40)
        lines = [record.getMessage() for record in logged.records]
        self.assertEqual(lines, [
            "scanning photos: 250 of 1000 images, 0:00:30 left",
            "scanning photos: 300 of 1000 images, 0:00:49 left",
            "scanning photos: 300 images in 0:00:21",
        ])

    def test_quick_work_logs_nothing_and_an_unknown_total_logs_the_rate(self):
        clock = Clock()
        with self.assertNoLogs("absl", "INFO"):
            with progress.Progress("quick", 10, terminal=False, clock=clock) as shown:
                shown.add(10)
        shown = progress.Progress("records", None, "records", terminal=False, clock=clock)
        shown.add(500)
        self.assertEqual(shown.describe(clock.now + 20), "500 records, 25 a second")

    def test_a_bar_on_a_terminal_writes_to_stderr(self):
        stderr, stdout = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            with progress.Progress("teacher logits", 50, "views", terminal=True) as shown:
                shown.add(50)
        self.assertIn("teacher logits", stderr.getvalue())
        self.assertIn("/50 [", stderr.getvalue())
        self.assertIn("views/s", stderr.getvalue())
        self.assertEqual(stdout.getvalue(), "")
