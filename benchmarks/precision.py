"""float32 against mixed bfloat16 on this machine: teacher epoch, teacher-logit pass, student epoch.

One process, real MNIST (the packaged copy), kd_tf's own models, pipelines and
`Distiller`, the default flag files' settings (teacher: `lenet_bn`, batch 128,
random augmentation, `steps_per_execution=8` as kd_tf applies it, the largest
divisor of an epoch's steps up to 8; student: `seed_mlp` on cached logits,
batch 128). The precisions alternate, float32 then bfloat16, for
`--rounds` rounds; each measure is a median over rounds, and the ratio is
float32 / bfloat16 of those medians.

- teacher epoch: training seconds of the second epoch (the first one traces);
- teacher-logit pass: the trained teacher over the 55,000 training images
  (batch 1024), as the student stage's cached pass runs it;
- student epoch: training seconds of the second epoch of the student on those
  cached logits.

It also reports how far the bfloat16 teacher's logits are from the float32
ones for the same weights (largest absolute difference on the test split), and
the test accuracies.

Usage:

```
make setup && .venv/bin/python benchmarks/precision.py --out=/tmp/kd_tf_precision
```
"""

import argparse
import json
import os
import statistics
import time

import keras
import numpy as np

from kd_tf import (
    cpu,
    data,
    distillation,
    distillation_losses,
    distribution,
    logits_cache,
    models,
    pipelines,
    precision,
    training,
)

PRECISIONS = ("float32", "mixed_bfloat16")
BATCH = 128


class _EpochTimer(keras.callbacks.Callback):
    """Seconds of each training epoch."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._started, 3))


def _teacher(splits, policy, epochs):
    with precision.policy(policy):
        model = models.build_model("lenet_bn", splits.image_shape, splits.num_classes)
        steps = pipelines.steps_per_epoch(len(splits.train), BATCH)
        model.compile(
            optimizer=training.make_optimizer(
                "adam", 3e-3, "cosine", steps_per_epoch=steps, epochs=epochs
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            steps_per_execution=distribution.steps_per_execution(8, steps),
        )
    train = pipelines.training_dataset(
        splits.train, BATCH, seed=0, augment=True
    )
    timer = _EpochTimer()
    model.fit(train, epochs=epochs, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    return model, timer.seconds[-1]


def _student_epoch(splits, policy, logits, epochs):
    with precision.policy(policy):
        student = models.build_model("seed_mlp", splits.image_shape, splits.num_classes)
        terms = [("kd", distillation_losses.KD(4.0), 1.0)]
        distiller = distillation.Distiller(student, terms, alpha=0.9)
        steps = pipelines.steps_per_epoch(len(splits.train), BATCH)
        distiller.compile(
            optimizer=training.make_optimizer(
                "adam", 2e-3, "cosine", steps_per_epoch=steps, epochs=epochs
            ),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            steps_per_execution=distribution.steps_per_execution(8, steps),
        )
    train = pipelines.training_dataset(
        splits.train, BATCH, seed=0, logits=logits_cache.LogitsTable(logits[:, None])
    )
    timer = _EpochTimer()
    distiller.fit(train, epochs=epochs, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    return student, timer.seconds[-1]


def _accuracy(model, split):
    logits = model.predict(split.images, batch_size=1024, verbose=0)
    return training.evaluate_logits(logits, split.labels)["accuracy"]


def _round(splits, policy, epochs):
    teacher, teacher_epoch = _teacher(splits, policy, epochs)
    started = time.perf_counter()
    logits = teacher.predict(splits.train.images, batch_size=1024, verbose=0)
    logit_pass = time.perf_counter() - started
    student, student_epoch = _student_epoch(splits, policy, logits, epochs)
    return teacher, {
        "teacher_epoch_seconds": teacher_epoch,
        "teacher_logit_pass_seconds": round(logit_pass, 3),
        "student_epoch_seconds": student_epoch,
        "teacher_test_accuracy": _accuracy(teacher, splits.test),
        "student_test_accuracy": _accuracy(student, splits.test),
    }


def _logit_distance(teacher, splits):
    """Largest |bfloat16 - float32| teacher logit on the test split, same weights."""
    with precision.policy("mixed_bfloat16"):
        bf16 = models.build_model("lenet_bn", splits.image_shape, splits.num_classes)
    bf16.set_weights(teacher.get_weights())
    exact = teacher.predict(splits.test.images, batch_size=1024, verbose=0)
    rounded = bf16.predict(splits.test.images, batch_size=1024, verbose=0)
    return float(np.max(np.abs(exact.astype(np.float64) - rounded)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    splits = data.load_splits("mnist", "packaged")
    runs = {policy: [] for policy in PRECISIONS}
    for number in range(args.rounds):
        for policy in PRECISIONS:
            keras.utils.set_random_seed(0)
            teacher, measures = _round(splits, policy, args.epochs)
            runs[policy].append(measures)
            print(f"round {number + 1} {policy}: {measures}", flush=True)
            if policy == "float32":
                distance = _logit_distance(teacher, splits)
    medians = {
        policy: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for policy, rows in runs.items()
    }
    ratios = {
        key: round(medians["float32"][key] / medians["mixed_bfloat16"][key], 2)
        for key in medians["float32"]
        if key.endswith("seconds")
    }
    result = {
        "cpu": cpu.as_json(*cpu.setup()),
        "auto_resolves_to": precision.resolve("auto"),
        "rounds": runs,
        "medians": medians,
        "float32_over_bfloat16": ratios,
        "teacher_logits_max_abs_difference": distance,
    }
    with open(os.path.join(args.out, "precision.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: result[k] for k in ("medians", "float32_over_bfloat16")}, indent=1))
    print("teacher logits, largest |bf16 - f32| on the test split:", distance)


if __name__ == "__main__":
    main()
