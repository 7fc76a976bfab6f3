"""Snapshot of what kd_tf's stages produce, to show that a change keeps behaviour bit for bit.

Runs fixed-slice commands through the command line (`python -m kd_tf.main`) of the
checkout in `--repo`, then records, for every export, the SHA-256 of each saved
variable, and every report field apart from timings (keys containing "seconds") and the
SavedModel size in the TFLite report (see `_UNSTABLE`),
with the output root replaced by `<OUT>` so that paths compare too (give both
runs `--out` paths of the same length: a SavedModel's size includes them). `--compare`
diffs two snapshots and exits 1 when anything but timings differs.

Usage (the commit before a change against the one after it):

```
git worktree add /tmp/before <commit-before>
.venv/bin/python tools/behaviour_snapshot.py --repo=/tmp/before --out=/tmp/snap_before
.venv/bin/python tools/behaviour_snapshot.py --repo=. --out=/tmp/snap_after_
.venv/bin/python tools/behaviour_snapshot.py --compare /tmp/snap_before/snapshot.json \
    /tmp/snap_after_/snapshot.json
```
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

SLICE = ["--train_examples=2048", "--epochs=2", "--seed=3", "--validation_examples=1000"]


def commands(out):
    """(name, arguments, export or report path) of every run, in order."""
    teacher = f"{out}/teacher"
    student = ["--flagfile=flags/student.cfg", f"--teacher_dir={teacher}", "--augment_views=3"]
    return [
        ("teacher", ["--flagfile=flags/teacher.cfg", f"--export_dir={teacher}"], teacher),
        ("student_cached", [*student, f"--export_dir={out}/student_cached"], None),
        ("student_disk", [*student, "--logits_cache=disk", f"--export_dir={out}/student_disk"], None),
        (
            "student_online",
            [*student, "--augment_views=0", "--teacher_logits=online", f"--export_dir={out}/online"],
            None,
        ),
        (
            "student_mirrored",
            [*student, "--strategy=mirrored", "--cpu_devices=2", "--steps_per_execution=1",
             f"--export_dir={out}/mirrored"],
            None,
        ),
        ("scratch", ["--flagfile=flags/scratch.cfg", f"--export_dir={out}/scratch"], None),
        (
            "compare",
            ["--flagfile=flags/compare.cfg", f"--saved_models_dir={out}/models", f"--export_dir={out}/compare"],
            None,
        ),
        (
            "tune",
            ["--flagfile=flags/tune.cfg", f"--teacher_dir={teacher}", "--max_trials=2",
             "--augment_views=3", f"--tune_dir={out}/tune"],
            None,
        ),
        (
            "tflite",
            ["--stage=tflite", f"--model_dir={out}/scratch", "--quantize=dynamic",
             f"--tflite_path={out}/scratch.tflite"],
            None,
        ),
        ("predict", ["--stage=predict", f"--model_dir={out}/scratch", "--test_index=0,1,2,3"], None),
    ]


# The TFLite report's SavedModel size counts fingerprint.pb, whose varint-encoded
# random fingerprints vary by a byte or two between two runs of the same code.
_UNSTABLE = {("saved_model", "bytes")}


def _normalise(value, out, parent=None):
    if isinstance(value, dict):
        return {
            key: _normalise(item, out, key)
            for key, item in value.items()
            if "seconds" not in key and (parent, key) not in _UNSTABLE
        }
    if isinstance(value, list):
        return [_normalise(item, out) for item in value]
    if isinstance(value, str):
        return value.replace(out, "<OUT>")
    return value


def _export_record(export_dir):
    """The sorted SHA-256 of every saved variable (the checkpoint's variable order
    changes from run to run) and of the export's logits on fixed images."""
    import numpy as np
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    variables = sorted(
        hashlib.sha256(reader.get_tensor(name).tobytes()).hexdigest()
        for name in reader.get_variable_to_shape_map()
        if "VARIABLE_VALUE" in name
    )
    signature = tf.saved_model.load(export_dir).signatures["serving_default"]
    shape = signature.structured_input_signature[1]["images"].shape[1:]
    images = np.random.default_rng(0).integers(0, 256, (64, *shape), dtype=np.uint8)
    logits = signature(images=tf.constant(images))["logits"].numpy()
    return {"variables": variables, "logits": hashlib.sha256(logits.tobytes()).hexdigest()}


def _exports(out):
    found = {}
    for root, _, names in os.walk(out):
        if "saved_model.pb" in names:
            found[os.path.relpath(root, out)] = _export_record(root)
    return found


def _reports(out):
    found = {}
    for root, _, names in os.walk(out):
        for name in names:
            # summary.md repeats compare's report.json, with training seconds.
            if (name.endswith(".json") or name.endswith(".cfg")) and name != "snapshot.json":
                path = os.path.join(root, name)
                if "/search/" in path or "/tune/search" in path:
                    continue
                with open(path) as f:
                    text = f.read()
                key = os.path.relpath(path, out)
                found[key] = _normalise(json.loads(text) if name.endswith(".json") else text, out)
    return found


def snapshot(repo, out, python):
    os.makedirs(out, exist_ok=False)
    env = {**os.environ, "PYTHONPATH": os.path.abspath(repo), "TF_CPP_MIN_LOG_LEVEL": "2"}
    outputs, seconds = {}, {}
    for name, argv, _ in commands(out):
        started = time.perf_counter()
        result = subprocess.run(
            [python, "-m", "kd_tf.main", *argv, *SLICE],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds[name] = round(time.perf_counter() - started, 1)
        if result.returncode:
            sys.exit(f"{name} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        if name == "predict":
            outputs[name] = result.stdout.replace(out, "<OUT>")
        print(f"{name}: {seconds[name]} s", flush=True)
    record = {"exports": _exports(out), "reports": _reports(out), "stdout": outputs, "seconds": seconds}
    with open(os.path.join(out, "snapshot.json"), "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)


def _differences(a, b, new_fields, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a and key in new_fields:
                continue
            if key not in a or key not in b:
                yield f"{path}/{key}: only in {'after' if key in b else 'before'}"
            else:
                yield from _differences(a[key], b[key], new_fields, f"{path}/{key}")
    elif a != b:
        yield f"{path}: {str(a)[:120]!r} != {str(b)[:120]!r}"


def compare(before_path, after_path, new_fields=()):
    with open(before_path) as f:
        before = json.load(f)
    with open(after_path) as f:
        after = json.load(f)
    before.pop("seconds")
    after.pop("seconds")
    differences = list(_differences(before, after, set(new_fields)))
    variables = sum(len(v["variables"]) for v in before["exports"].values())
    print(
        f"{len(before['exports'])} exports, {variables} variables, "
        f"{len(before['reports'])} reports and flag files compared: {len(differences)} differences"
        + (f" (fields new in AFTER, not counted: {', '.join(new_fields)})" if new_fields else "")
    )
    for line in differences:
        print("  " + line)
    return 1 if differences else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=".")
    parser.add_argument("--out")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument(
        "--new_fields", default="", help="comma-separated report keys AFTER may add"
    )
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare, [f for f in args.new_fields.split(",") if f]))
    snapshot(args.repo, os.path.abspath(args.out), args.python)


if __name__ == "__main__":
    main()
