"""Distillation losses: the epoch time of DKD and DIST against KD, and the
peak memory of cached hint features.

Through kd_tf's command line only (`kd_tf_process`), on real MNIST:

1. a quick teacher, unless `--teacher_dir` gives one: `lenet_bn`, one epoch
   (the speed of the losses does not depend on its accuracy);
2. speed: the student stage with cached teacher logits (`seed_mlp`, batch
   128, `--steps_per_execution=8` as flags/student.cfg, `--epochs` epochs),
   once per loss of `LOSSES`, the losses alternating over `--rounds` rounds
   (kd dkd dist kd dkd dist ...) so that they share the machine's load; each
   run's training seconds per epoch (validation excluded, from its report),
   the first epoch (tracing) dropped; the table gives each loss's median
   over its runs and its ratio to KD's;
3. memory (`--memory`): peak resident memory of one epoch of `compact_cnn`
   with cached logits: without hints, and with a hint from the teacher's
   `block2_relu` feature map (8x8x64 floats an image) cached in memory and on
   disk (`--logits_memory_mb` below its size). GNU time's peak RSS, and the
   peaks of its two parts, sampled from /proc every 0.1 s: anonymous memory
   (`RssAnon`, what the process holds) and mapped file pages (`RssFile`, the
   memory-mapped cache file's pages among them, which the kernel may drop).

Usage:

    python benchmarks/distillation_losses.py --out=/tmp/kd_tf_losses

Writes `<out>/distillation_losses.json` and prints the tables.
"""

import os
import re
import statistics
import threading
import time

import kd_tf_process
from absl import app, flags

_OUT = flags.DEFINE_string("out", "/tmp/kd_tf_losses", "Directory for exports, logs and results.")
_TEACHER_DIR = flags.DEFINE_string("teacher_dir", None, "A teacher export (default: train one).")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds of the alternating losses.")
_EPOCHS = flags.DEFINE_integer("epochs", 5, "Epochs of each speed run (the first is dropped).")
_SPEED = flags.DEFINE_bool("speed", True, "Measure the epoch time of the losses.")
_MEMORY = flags.DEFINE_bool("memory", True, "Measure the peak memory of cached hints.")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", None, "Cap (smoke runs only).")

LOSSES = {
    "kd": ("--distillation_loss=kd",),
    "dkd": ("--distillation_loss=dkd", "--alpha=0.5"),
    "dist": ("--distillation_loss=dist", "--alpha=0.5"),
}
HINT = "--hint_layers=block2_relu:block2_relu"
MEMORY_RUNS = {
    "no_hint": (),
    "hint_in_memory": (HINT, "--logits_cache=memory"),
    "hint_on_disk": (HINT, "--logits_cache=auto", "--logits_memory_mb=64"),
}


def _common(out):
    argv = ["--batch_size=128", "--seed=0", f"--log_dir={out}/logs"]
    if _TRAIN_EXAMPLES.value:
        argv.append(f"--train_examples={_TRAIN_EXAMPLES.value}")
    return argv


def _teacher(out):
    if _TEACHER_DIR.value:
        return _TEACHER_DIR.value
    export_dir = os.path.join(out, "teacher")
    if not os.path.isdir(export_dir):
        finished = kd_tf_process.run(
            ["--stage=teacher", "--model=lenet_bn", "--epochs=1", *_common(out),
             f"--export_dir={export_dir}"],
            os.path.join(out, "logs", "teacher.log"),
        )
        _check(finished)
    return export_dir


def _check(finished):
    if finished.exit_status:
        raise SystemExit(f"failed ({finished.exit_status}): {' '.join(finished.command)}")


def _student(out, name, teacher, argv, *, measure_memory=False):
    export_dir = os.path.join(out, "students", name)
    finished = kd_tf_process.run(
        ["--stage=student", f"--teacher_dir={teacher}", "--teacher_logits=cached",
         *_common(out), f"--export_dir={export_dir}", "--overwrite", *argv],
        os.path.join(out, "logs", f"{name}.log"),
        measure_memory=measure_memory,
    )
    _check(finished)
    return finished, kd_tf_process.read_report(export_dir)


def speed(out, teacher):
    """`{loss: {"epoch_seconds": [...], "median": s, "ratio_to_kd": r}}`."""
    seconds = {loss: [] for loss in LOSSES}
    for round_number in range(_ROUNDS.value):
        for loss, argv in LOSSES.items():
            _, report = _student(
                out, f"{loss}_{round_number}", teacher,
                ["--model=seed_mlp", "--steps_per_execution=8", f"--epochs={_EPOCHS.value}", *argv],
            )
            seconds[loss] += [epoch["train_seconds"] for epoch in report["epochs"][1:]]
    medians = {loss: statistics.median(values) for loss, values in seconds.items()}
    return {
        loss: {
            "epoch_seconds": values,
            "median": round(medians[loss], 3),
            "ratio_to_kd": round(medians[loss] / medians["kd"], 3),
        }
        for loss, values in seconds.items()
    }


class _PeakSampler:
    """Samples the peaks of `RssAnon` and `RssFile` (/proc) of the process
    GNU time runs, while the block lasts."""

    def __init__(self):
        self.peaks = {"RssAnon": 0, "RssFile": 0}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._done.set()
        self._thread.join()

    def _sample(self):
        while not self._done.wait(0.1):
            for pid in _kd_tf_pids():
                try:
                    with open(f"/proc/{pid}/status") as f:
                        text = f.read()
                except OSError:
                    continue
                for key in self.peaks:
                    found = re.search(rf"{key}:\s+(\d+) kB", text)
                    if found:
                        self.peaks[key] = max(self.peaks[key], int(found.group(1)))


def _kd_tf_pids():
    """Processes running `-m kd_tf.main` as children of this one's children."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                command = f.read().split(b"\0")
        except OSError:
            continue
        if b"kd_tf.main" in command and not command[0].endswith(b"time"):
            pids.append(name)
    return pids


def memory(out, teacher):
    """`{run: {"peak_rss_mib", "peak_anonymous_mib", "peak_file_mib", ...}}`."""
    rows = {}
    for name, argv in MEMORY_RUNS.items():
        with _PeakSampler() as sampler:
            finished, report = _student(
                out, f"memory_{name}", teacher, ["--model=compact_cnn", "--epochs=1", *argv],
                measure_memory=True,
            )
        rows[name] = {
            "peak_rss_mib": round(finished.peak_rss_kib / 1024, 1),
            "peak_anonymous_mib": round(sampler.peaks["RssAnon"] / 1024, 1),
            "peak_file_mib": round(sampler.peaks["RssFile"] / 1024, 1),
            "logits_cache": report["logits_cache"],
            "logits_cache_megabytes": report["logits_cache_megabytes"],
            "command": " ".join(finished.command),
        }
    return rows


def main(_):
    out = os.path.abspath(_OUT.value)
    os.makedirs(out, exist_ok=True)
    teacher = _teacher(out)
    results = {
        "commit": kd_tf_process.checkout_commit(),
        "cpu": kd_tf_process.cpu_name(),
        "teacher_dir": teacher,
        "rounds": _ROUNDS.value,
        "epochs": _EPOCHS.value,
    }
    if _SPEED.value:
        results["speed"] = speed(out, teacher)
    if _MEMORY.value:
        results["memory"] = memory(out, teacher)
    kd_tf_process.write_json(results, os.path.join(out, "distillation_losses.json"))
    for loss, row in results.get("speed", {}).items():
        print(f"{loss}: median epoch {row['median']} s, {row['ratio_to_kd']} x KD")
    for name, row in results.get("memory", {}).items():
        print(
            f"{name}: peak RSS {row['peak_rss_mib']} MiB (anonymous {row['peak_anonymous_mib']}, "
            f"mapped files {row['peak_file_mib']}), cache {row['logits_cache']}"
        )


if __name__ == "__main__":
    app.run(main)
