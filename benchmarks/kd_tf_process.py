"""`python -m kd_tf.main` as a user runs it, for the benchmarks that must not
depend on kd_tf's internals: a child process, its output, its export's report.

`run` starts `python -m kd_tf.main ARGV` in a checkout (this one by default;
the child imports that checkout's kd_tf, as its current directory and
`PYTHONPATH`), shows its output as it comes and keeps it in a log file. With
`separate_stderr`, stdout alone is shown and logged, and stderr goes to its own
file, both kept as text on the result (`stdout`, `stderr`). With
`measure_memory`, the command runs under GNU time (`/usr/bin/time -v`), whose
figures are parsed into `peak_rss_kib` and `elapsed_seconds`. Paths in ARGV
should be absolute, since the child runs in the checkout.

Usage (from another script in `benchmarks/`):

```python
import kd_tf_process

finished = kd_tf_process.run(["--flagfile=flags/teacher.cfg", "--export_dir=/tmp/t"],
                             log_path="/tmp/teacher.log")
report = kd_tf_process.read_report("/tmp/t")
```
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
import time

from kd_tf import cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GNU_TIME = "/usr/bin/time"
_TIME_FIELDS = {
    "peak_rss_kib": re.compile(r"Maximum resident set size \(kbytes\): (\d+)"),
    "elapsed": re.compile(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)"),
}


@dataclasses.dataclass
class FinishedRun:
    """A finished `python -m kd_tf.main` process.

    Attributes:
        command: the full command line, as run.
        cwd: the checkout it ran in.
        exit_status: its exit status.
        seconds: wall seconds, measured here.
        peak_rss_kib, elapsed_seconds: GNU time's maximum resident set size
            and wall clock, with `measure_memory` (else None).
        stdout, stderr: the child's two streams as text, with
            `separate_stderr` (else None).
    """

    command: list
    cwd: str
    exit_status: int
    seconds: float
    peak_rss_kib: int | None = None
    elapsed_seconds: float | None = None
    stdout: str | None = None
    stderr: str | None = None


def run(argv, log_path, *, repo=REPO, measure_memory=False, separate_stderr=False):
    """Runs `python -m kd_tf.main ARGV` in `repo`, its output shown and saved
    to `log_path` (GNU time's report to `log_path + ".time"`; with
    `separate_stderr`, stderr to `log_path + ".stderr"`, shown once it ends).

    Returns:
        A `FinishedRun`; a failed run is returned, not raised.
    """
    command = [sys.executable, "-m", "kd_tf.main", *argv]
    time_path = log_path + ".time"
    if measure_memory:
        command = [GNU_TIME, "-v", "-o", time_path, *command]
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    print("$", " ".join(command), flush=True)
    stderr_path = log_path + ".stderr" if separate_stderr else os.devnull
    started = time.perf_counter()
    lines = []
    with open(log_path, "w") as log, open(stderr_path, "w") as err:
        process = subprocess.Popen(
            command,
            cwd=repo,
            env={**os.environ, "PYTHONPATH": repo},
            stdout=subprocess.PIPE,
            stderr=err if separate_stderr else subprocess.STDOUT,
            text=True,
        )
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
            if separate_stderr:
                lines.append(line)
        exit_status = process.wait()
    finished = FinishedRun(command, repo, exit_status, round(time.perf_counter() - started, 1))
    if separate_stderr:
        with open(stderr_path) as f:
            finished.stdout, finished.stderr = "".join(lines), f.read()
        sys.stdout.write(finished.stderr)
    if measure_memory:
        finished.peak_rss_kib, finished.elapsed_seconds = _gnu_time_figures(time_path)
    return finished


def _gnu_time_figures(time_path):
    """`(peak_rss_kib, elapsed_seconds)` from `/usr/bin/time -v`'s report."""
    with open(time_path) as f:
        text = f.read()
    rss = _TIME_FIELDS["peak_rss_kib"].search(text)
    elapsed = _TIME_FIELDS["elapsed"].search(text)
    seconds = None
    if elapsed:
        seconds = 0.0
        for part in elapsed.group(1).split(":"):
            seconds = seconds * 60 + float(part)
    return (int(rss.group(1)) if rss else None), seconds


def read_report(export_dir):
    """The `report.json` kd_tf wrote into an export (`assets.extra/`)."""
    with open(os.path.join(export_dir, "assets.extra", "report.json")) as f:
        return json.load(f)


def cpu_name():
    """The CPU's model name, its strongest feature for kd_tf (`kd_tf.cpu`: AMX,
    AVX-512 BF16, AVX-512, AVX2) and the cores this process may run on."""
    machine = cpu.describe()
    return f"{machine.model} with {machine.kind}, {machine.cores} cores"


def checkout_commit(repo=REPO):
    """The commit `repo` has checked out (with `+changes` if its tree differs), or None."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if changed.strip() else "")


def write_json(value, path):
    """Writes `value` as indented JSON to `path` (its directory created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
