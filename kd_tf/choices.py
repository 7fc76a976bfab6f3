"""What each flag can take: the names the command line offers and the config
validates, kept free of TensorFlow and Keras.

`python -m kd_tf.main --help`, `--helpfull` and a mistyped flag are answered
from this module, `kd_tf.config`, `kd_tf.loss_flags` and
`kd_tf.command_line` alone, before TensorFlow is imported (7 to 8 s of CPU
time on a 2-core AVX2 machine); TensorFlow loads only when a stage runs. The
modules that implement each choice take its names from here
(`distribution.STRATEGIES` is `choices.STRATEGIES`), and the model registry
(`kd_tf.models.MODELS`) pairs each card of `MODEL_CARDS` with its builder.

Usage:

```python
choices.is_model("seed_mlp")        # True
choices.is_model("my_model.keras")  # True: a model file
print(choices.describe_models())    # one line per registered model
```
"""

import dataclasses

DATA_SOURCES = ("auto", "tfds", "packaged", "idx", "directory", "tfrecord")
# Decoded images a split may hold in memory before it is streamed from its files.
DEFAULT_MEMORY_MB = 256
TEACHER_LOGITS_MODES = ("auto", "cached", "online")
LOGITS_CACHES = ("auto", "memory", "disk")
LOGIT_LOSSES = ("kd", "dkd", "dist")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
QUANTIZATIONS = ("none", "dynamic", "int8")
# Training images that calibrate an int8 conversion's activations.
REPRESENTATIVE_EXAMPLES = 500
PIXEL_RANGES = {"0-255": (0.0, 255.0), "0-1": (0.0, 1.0), "-1-1": (-1.0, 1.0)}
# `auto`: the range is picked from the data (see `kd_tf.teacher_check`).
TEACHER_PIXEL_RANGES = ("auto", *PIXEL_RANGES)
TEACHER_OUTPUTS = ("auto", "logits", "probabilities")
TUNERS = ("bayesian", "random", "hyperband")
MODEL_FILE_SUFFIX = ".keras"


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What the registry says of a model besides how to build it.

    Args:
        role: "teacher" or "student": what the model is meant for.
        description: one line for `--helpfull` and docs/models.md.
        min_image_size: the smallest height and width it takes (its
            unpadded convolutions and poolings shrink the image).
    """

    role: str
    description: str
    min_image_size: int = 1


MODEL_CARDS = {
    # 16 = (2 + 4) x 2 + 4: 5x5 convolution, 2x2 pool, 5x5 convolution, 2x2 pool (of 2 pixels).
    "lenet_bn": ModelCard("teacher", "LeNet-5 shape with batch norm, the default teacher", 16),
    "lenet_narrow": ModelCard(
        "teacher", "lenet_bn's shape at half its channels, twice as fast on a CPU", 16
    ),
    # 6 = 2 + 2 + 2: two 3x3 convolutions, then a 2x2 pool (of 2 pixels).
    "seed_cnn": ModelCard("teacher", "the reference teacher (conv 32, conv 64, dense 128)", 6),
    "seed_mlp": ModelCard("student", "the reference student (MLP 128, 64), the default student"),
    "compact_cnn": ModelCard("student", "small CNN (conv 8, conv 16, dense 32)", 16),
    "resnet_small": ModelCard(
        "teacher", "small ResNet with batch norm, the teacher for colour photos"
    ),
    "mobilenet_small": ModelCard(
        "student", "depthwise-separable convolutions, the student for colour photos"
    ),
}
DEFAULT_TEACHER = "lenet_bn"
DEFAULT_STUDENT = "seed_mlp"
MODEL_PROBLEM = (
    "{0} must be a registered model (" + ", ".join(MODEL_CARDS) + ") or the path of a .keras file"
)


def is_model_file(model):
    """Whether `--model` names a `.keras` file rather than a registry entry."""
    return model.endswith(MODEL_FILE_SUFFIX)


def is_model(value):
    """Whether `value` is something `--model` takes: a registry name or a
    path ending in `.keras`."""
    return value in MODEL_CARDS or is_model_file(value)


def describe_models():
    """One line per registered model, for `--helpfull` and docs/models.md."""
    return "\n".join(
        f"  {name} ({card.role}): {card.description}" for name, card in MODEL_CARDS.items()
    )
