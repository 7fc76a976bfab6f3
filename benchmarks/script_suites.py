"""The suites that run a script of benchmarks/ as a process: the data-set figures, the
methods table and precision.

Each suite runs its scripts one after the other (`python benchmarks/SCRIPT.py ...`, from
the checkout), the last one with the arguments given after `--` to `benchmarks/run.py`,
and returns their commands, exit statuses and the JSON the last one wrote. With `--smoke`
each script is only imported, with what it imports (its `main` does not run): the data
they build and the runs they make take minutes to hours.

- `digits`: scikit-learn's 8x8 digits through every stage (`digits.py`);
- `image_folders`: MNIST written as PNG class folders (`mnist_as_files.py`), then the
  directory source against the packaged copy (`directory_vs_packaged.py`);
- `streaming_memory`: a 4.2 GB generated image-folder data set (`make_large_dataset.py`),
  then a student stage's peak memory on it (`streaming_memory.py`);
- `methods`: scratch, KD, DKD, DIST and KD with a hint over the seeds of `--seeds`
  (`methods_over_seeds.py`);
- `precision`: float32 against mixed bfloat16 (`precision.py`);
- `losses`: the epoch time of DKD and DIST against KD, and the peak memory of cached hint
  features (`distillation_losses.py`).
"""

import functools
import os
import subprocess
import sys

from kd_tf import reporting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name, *argv):
    return [sys.executable, os.path.join("benchmarks", f"{name}.py"), *argv]


def _plan(name, out, seeds):
    """`(commands but the last one's extra arguments, the JSON the last one writes)`."""
    plans = {
        "methods": (
            [_script("methods_over_seeds", f"--out={out}", f"--seeds={','.join(map(str, seeds))}")],
            f"{out}/methods_over_seeds.json",
        ),
        "digits": ([_script("digits", f"--out={out}")], f"{out}/digits.json"),
        "image_folders": (
            [_script("mnist_as_files", f"--out={out}/mnist_files"),
             _script("directory_vs_packaged", f"--files={out}/mnist_files", f"--out={out}/dvp")],
            f"{out}/dvp/directory_vs_packaged.json",
        ),
        "streaming_memory": (
            [_script("make_large_dataset", f"--out={out}/large64"),
             _script("streaming_memory", f"--data_dir={out}/large64", f"--out={out}/memory")],
            f"{out}/memory/streaming_memory.json",
        ),
        "precision": ([_script("precision", f"--out={out}")], f"{out}/precision.json"),
        "losses": (
            [_script("distillation_losses", f"--out={out}")],
            f"{out}/distillation_losses.json",
        ),
    }
    return plans[name]


def run_scripts(name, settings):
    """Runs suite `name`'s scripts (see the module doc)."""
    out = f"{settings.out}/{name}"
    commands, written = _plan(name, out, settings.seeds)
    if settings.smoke:
        commands = [[sys.executable, "-c", f"import {_module(command)}"] for command in commands]
    else:
        commands[-1] = [*commands[-1], *settings.script_args]
    statuses = []
    for command in commands:
        print("$", " ".join(command), flush=True)
        status = subprocess.run(
            command, cwd=REPO, env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO}/benchmarks"},
            stdout=subprocess.DEVNULL if settings.smoke else None,
        ).returncode
        statuses.append(status)
        if status != 0:
            raise RuntimeError(f"{name}: {' '.join(command)} exited with status {status}")
    figures = reporting.read_json(written) if not settings.smoke else None
    return {"commands": commands, "exit_statuses": statuses, "figures": figures}


def _module(command):
    """The module name of a `_script` command's script."""
    return os.path.splitext(os.path.basename(command[1]))[0]


SUITES = {
    name: functools.partial(run_scripts, name)
    for name in ("digits", "image_folders", "streaming_memory", "methods", "precision", "losses")
}
