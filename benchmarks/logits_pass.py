"""The student stage's teacher-logits pass against the teacher's bare serving signature.

Side by side in one process, on the same images, batch size and CPU, alternating A B A B:

- **bare**: the SavedModel's `serving_default` signature (`tf.saved_model.load`) on batches
  already in memory, `views` times over the images: what the teacher's inference alone costs;
- **pass**: `LogitsTable.compute` over `views` views of the same images (view 0 the images,
  the others drawn and distorted on tf.data's threads while the teacher runs), as the student
  stage's cached mode runs it, from the split to the filled table.

Both run under the same precision (`precision.graph_rewrite`). The result holds each side's
images per second (median over rounds) and `pass / bare`, the share of the teacher's bare speed
the pass keeps (1.0: drawing the views costs nothing).

`suite` (`python -m benchmarks.run logits_pass`) measures the default teacher
(`models.DEFAULT_TEACHER`, exported untrained: inference costs what a trained one's does) on
the first `EXAMPLES` training images of MNIST in the student stage's default `VIEWS` views,
its batch (`--eval_batch_size`'s default) and the precision `--precision=auto` picks here.

Usage:

```python
result = logits_pass.measure("saved_models/teacher/1", split, views=4, batch_size=1024, rounds=3)
result["ratio"]  # e.g. 0.93
```
"""

import statistics
import time

import keras
import tensorflow as tf

from kd_tf import config, data, export, logits_cache, models, precision, teacher_adapter

EXAMPLES, VIEWS = 8192, 15
REQUIRED_RATIO = 0.9


def _timed(function):
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def measure(teacher_dir, split, *, views, batch_size, rounds, precision_name="float32"):
    """Images per second of the bare signature and of the logits pass (see the module doc).

    Args:
        teacher_dir: a SavedModel following kd_tf's serving contract.
        split: an in-memory `data.Split` (its images are the bare side's batches).
        views: views of each image (the bare side runs the images this many times).
        batch_size: the batch of both sides (the student stage's `--eval_batch_size`).
        rounds: alternating rounds; each side's figure is the median.
        precision_name: the dtype policy both sides compute in.

    Returns:
        A dict: `images`, `bare_images_per_second`, `pass_images_per_second`, `ratio`,
        and the `bare_seconds` and `pass_seconds` of every round.
    """
    adapter = teacher_adapter.TeacherAdapter(
        export.load_serving_model(teacher_dir, float_input=True), split.image_shape
    )
    serving = tf.saved_model.load(teacher_dir).signatures["serving_default"]
    batches = [
        tf.constant(split.images[start : start + batch_size])
        for start in range(0, len(split), batch_size)
    ]

    def bare():
        for _ in range(views):
            for images in batches:
                serving(images=images)["logits"].numpy()

    def logits_pass():
        logits_cache.LogitsTable.compute(
            adapter.logits, adapter.model.num_classes, split, num_views=views, seed=0,
            batch_size=batch_size,
        )

    seconds = {"bare": [], "pass": []}
    with precision.graph_rewrite(precision_name):
        bare(), logits_pass()  # traces and warms both
        for _ in range(rounds):
            seconds["bare"].append(_timed(bare))
            seconds["pass"].append(_timed(logits_pass))
    images = len(split) * views
    rates = {side: images / statistics.median(times) for side, times in seconds.items()}
    return {
        "images": images,
        "batch_size": batch_size,
        "precision": precision_name,
        "bare_images_per_second": round(rates["bare"]),
        "pass_images_per_second": round(rates["pass"]),
        "ratio": round(rates["pass"] / rates["bare"], 3),
        "bare_seconds": [round(s, 3) for s in seconds["bare"]],
        "pass_seconds": [round(s, 3) for s in seconds["pass"]],
    }


def suite(settings):
    """The default teacher's pass against its signature (see the module doc)."""
    train, _ = data.read_packaged_mnist()
    examples, views = (256, 2) if settings.smoke else (EXAMPLES, VIEWS)
    split = data.Split(train.images[:examples], train.labels[:examples])
    teacher_dir = f"{settings.out}/logits_pass/teacher"
    if not tf.saved_model.contains_saved_model(teacher_dir):
        keras.utils.set_random_seed(0)
        model = models.build_model(models.DEFAULT_TEACHER, split.image_shape, 10)
        export.export_model(model, teacher_dir, check_images=split.images[:8])
    result = measure(
        teacher_dir, split, views=views, batch_size=config.OptimizationConfig.eval_batch_size,
        rounds=settings.rounds, precision_name=precision.resolve("auto"),
    )
    return {**result, "required_ratio": REQUIRED_RATIO, "met": result["ratio"] >= REQUIRED_RATIO}
