"""The one entry point of the benchmarks that regenerate the figures of docs/.

    python -m benchmarks.run SUITE [SUITE ...] [--seeds=3] [--rounds=3] [--out=DIR]
                                               [--results_dir=DIR] [--smoke]
    python -m benchmarks.run --list

Each suite writes `RESULTS_DIR/<suite>.json`: its figures, the date, the commit, TensorFlow's
and Keras's versions, the CPU it ran on as kd_tf sees it (`kd_tf.cpu`: model, AVX2 /
AVX-512 / AMX, cores, oneDNN, and the threads and precision chosen) and the load average
before and after (what else was running), and prints its table. `--smoke` runs every suite
on a few hundred images for one epoch and one seed (the script suites only import their
scripts): it checks the wiring, not the figures (tests/test_benchmarks.py), and its results
are marked `"smoke": true`.

Suites (`SUITES`):

- `teacher_recipe`: `flags/teacher.cfg` against the candidate recipe, time to 99.5 % test
  accuracy and final accuracy, over seeds, side by side (`teacher_recipe.py`);
- `logits_pass`: the student stage's teacher-logits pass in images per second against the
  teacher's bare serving signature (`logits_pass.py`);
- `vs_keras`: the student stage against `keras.distillation.Distiller` online, whole stage,
  logits pass included (`vs_keras.py`); `levers`: what each lever of its speed gives;
- `demo`: `make demo`'s stages with per-stage seconds and the results table's rows, over
  seeds (`demo.py`);
- `digits`, `image_folders`, `streaming_memory`, `methods`, `precision`, `losses`: the
  figures of their sections of docs/, through their scripts (`script_suites.py`; the last
  script of a suite takes the flags given after `--`; `methods` gets `--seeds`).

A new suite is a function `suite(settings) -> dict` (with `"rows"`, a list of dicts, for
its table) registered in `SUITES`; `flag_sets.run_alternating` runs named sets of kd_tf
flags over seeds side by side, as a suite comparing methods needs.
"""

import argparse
import dataclasses
import datetime
import os
import platform
import sys

from kd_tf import cpu

cpu.prefer_onednn()  # as `python -m kd_tf.main` does, before TensorFlow loads

import keras
import tensorflow as tf

from benchmarks import demo, kd_tf_process, logits_pass, script_suites, teacher_recipe, vs_keras
from kd_tf import reporting

REPO = kd_tf_process.REPO
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")
SUITES = {
    "teacher_recipe": teacher_recipe.suite,
    "logits_pass": logits_pass.suite,
    "vs_keras": vs_keras.suite,
    "levers": vs_keras.levers,
    "demo": demo.suite,
    **script_suites.SUITES,
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every suite is given.

    Attributes:
        out: directory for the runs' exports and logs.
        seeds: the `--seed` values of the suites that run over seeds.
        rounds: alternating rounds of the suites that time things side by side.
        smoke: a few hundred images, one epoch, one seed: wiring only.
        script_args: arguments after `--`, for the script suites.
    """

    out: str
    seeds: tuple
    rounds: int
    smoke: bool = False
    script_args: tuple = ()


def machine():
    """The CPU as kd_tf sees it and chooses for it, and this host's load."""
    described, choices = cpu.setup()
    return {
        "cpu": cpu.as_json(described, choices),
        "summary": cpu.summary(described, choices),
        "host": platform.node(),
        "load_average_before": [round(load, 2) for load in os.getloadavg()],
    }


def run_suite(name, settings, results_dir):
    """Runs suite `name`; writes and returns its results."""
    started = datetime.datetime.now().astimezone()
    context = machine()
    figures = SUITES[name](settings)
    context["load_average_after"] = [round(load, 2) for load in os.getloadavg()]
    results = {
        "suite": name,
        "smoke": settings.smoke,
        "started": started.isoformat(timespec="seconds"),
        "wall_seconds": round((datetime.datetime.now().astimezone() - started).total_seconds(), 1),
        "commit": kd_tf_process.checkout_commit(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "machine": context,
        "settings": {"seeds": list(settings.seeds), "rounds": settings.rounds},
        **figures,
    }
    kd_tf_process.write_json(results, os.path.join(results_dir, f"{name}.json"))
    print(f"\n{name}: {context['summary']}; load {context['load_average_before']}")
    if figures.get("rows"):
        print(reporting.markdown_table(figures["rows"]))
    return results


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=", ".join(SUITES))
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--out", default="/tmp/kd_tf_benchmarks", help="exports and logs")
    parser.add_argument("--results_dir", default=RESULTS_DIR, help="where <suite>.json goes")
    parser.add_argument("--smoke", action="store_true", help="tiny runs: checks the wiring")
    own, script_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if (
        "--" in argv
    ) else (argv, [])
    args = parser.parse_args(own)
    unknown = [name for name in args.suites if name not in SUITES]
    if unknown or not (args.suites or args.list):
        parser.error(f"pick suites among {', '.join(SUITES)} (unknown: {', '.join(unknown)})")
    return args, tuple(script_args)


def main(argv):
    args, script_args = parse(argv)
    if args.list:
        print("\n".join(SUITES))
        return 0
    settings = Settings(
        out=os.path.abspath(args.out),
        seeds=(0,) if args.smoke else tuple(range(args.seeds)),
        rounds=1 if args.smoke else args.rounds,
        smoke=args.smoke,
        script_args=script_args,
    )
    for name in args.suites:
        run_suite(name, settings, os.path.abspath(args.results_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
