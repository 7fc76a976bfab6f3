"""The model registry: `--model=NAME` picks one of `MODELS`.

Every model takes raw uint8 images `[batch, H, W, C]`, scales them to [0, 1]
itself (so exports accept pixels as they are) and returns float32 logits
`[batch, num_classes]` with no activation, whatever the data set's image shape
and class count. Built under a mixed-precision policy (`kd_tf.precision`), the
hidden layers compute in 16 bits and the `logits` layer stays in float32.

`--model` also takes the path of a `.keras` file, whose architecture (and
weights) is trained instead (`kd_tf.model_file`).

Usage:

```python
model = models.build_model("compact_cnn", image_shape=(28, 28, 1), num_classes=10)
model = models.build_model("net.keras", image_shape=(32, 32, 3), num_classes=10)
```
"""

import dataclasses
from collections.abc import Callable

import keras
from keras import layers

from kd_tf import choices, model_file
from kd_tf.errors import ConfigError


def _scaled_input(image_shape, name):
    images = keras.Input(shape=tuple(image_shape), dtype="uint8", name="images")
    return images, layers.Rescaling(1.0 / 255.0, name=f"{name}_rescale")(images)


# Batch norm statistics are taken over the global batch (`synchronized=True`),
# so that N replicas train exactly like one device.
def _conv_bn_relu(x, filters, kernel_size, name):
    x = layers.Conv2D(filters, kernel_size, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(synchronized=True, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _dense_bn_relu(x, units, name):
    x = layers.Dense(units, use_bias=False, name=f"{name}_dense")(x)
    x = layers.BatchNormalization(synchronized=True, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _same_conv_bn(x, filters, strides, name, kernel_size=3):
    """A same-padded convolution and batch norm (no activation)."""
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    return layers.BatchNormalization(synchronized=True, name=f"{name}_bn")(x)


def _residual_block(x, filters, strides, name):
    """conv3x3 -> bn -> relu -> conv3x3 -> bn, plus the input (through a
    strided 1x1 convolution and bn where the shape changes), then relu."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _same_conv_bn(x, filters, strides, f"{name}_project", kernel_size=1)
    x = layers.ReLU(name=f"{name}_relu1")(_same_conv_bn(x, filters, strides, f"{name}_a"))
    x = _same_conv_bn(x, filters, 1, f"{name}_b")
    return layers.ReLU(name=f"{name}_relu2")(layers.Add(name=f"{name}_add")([x, shortcut]))


def resnet_small(image_shape, num_classes):
    """The colour teacher: a small ResNet, conv3x3 32 stem -> residual stages
    of 32, 64 (stride 2) and 2 x 128 (stride 2) filters -> global average
    pooling -> logits (604 k parameters on 32x32x3). Same padding: any image
    size from 1x1 up."""
    images, x = _scaled_input(image_shape, "resnet_small")
    x = layers.ReLU(name="stem_relu")(_same_conv_bn(x, 32, 1, "stem"))
    for index, (filters, strides) in enumerate(((32, 1), (64, 2), (128, 2), (128, 1))):
        x = _residual_block(x, filters, strides, f"res{index + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(images, logits, name="resnet_small")


def _separable_block(x, filters, strides, name):
    """depthwise conv3x3 (stride) -> bn -> relu -> pointwise conv1x1 -> bn -> relu."""
    x = layers.DepthwiseConv2D(
        3, strides=strides, padding="same", use_bias=False, name=f"{name}_depthwise"
    )(x)
    x = layers.BatchNormalization(synchronized=True, name=f"{name}_depthwise_bn")(x)
    x = layers.ReLU(name=f"{name}_depthwise_relu")(x)
    x = _same_conv_bn(x, filters, 1, f"{name}_pointwise", kernel_size=1)
    return layers.ReLU(name=f"{name}_pointwise_relu")(x)


def mobilenet_small(image_shape, num_classes):
    """The colour student: MobileNet-shaped, conv3x3 16 stem -> depthwise-
    separable blocks of 32, 64 (stride 2), 64, 128 (stride 2), 128 filters ->
    global average pooling -> logits (38 k parameters on 32x32x3). Same
    padding: any image size from 1x1 up."""
    images, x = _scaled_input(image_shape, "mobilenet_small")
    x = layers.ReLU(name="stem_relu")(_same_conv_bn(x, 16, 1, "stem"))
    for index, (filters, strides) in enumerate(((32, 1), (64, 2), (64, 1), (128, 2), (128, 1))):
        x = _separable_block(x, filters, strides, f"block{index + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(images, logits, name="mobilenet_small")


def seed_cnn(image_shape, num_classes):
    """The reference teacher: conv 32 -> conv 64 -> max-pool -> dropout 0.3 ->
    dense 128 -> dropout 0.5 -> dense (1.2 M parameters on MNIST)."""
    images, x = _scaled_input(image_shape, "seed_cnn")
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Dropout(0.3, name="dropout1")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    x = layers.Dropout(0.5, name="dropout2")(x)
    logits = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(images, logits, name="seed_cnn")


def seed_mlp(image_shape, num_classes):
    """The reference student: flatten -> 128 -> 64 -> logits (ReLU hidden
    layers, no activation on the logits; 109 k parameters on MNIST)."""
    images, x = _scaled_input(image_shape, "seed_mlp")
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    x = layers.Dense(64, activation="relu", name="fc2")(x)
    logits = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(images, logits, name="seed_mlp")


def _lenet_with_batch_norm(name, image_shape, num_classes, filters, dense_units, dropout):
    """conv5x5 -> pool -> conv5x5 -> pool -> dense (-> dropout) -> logits,
    each hidden layer with batch norm and ReLU."""
    images, x = _scaled_input(image_shape, name)
    x = _conv_bn_relu(x, filters[0], 5, "block1")
    x = layers.MaxPooling2D(name="pool1")(x)
    x = _conv_bn_relu(x, filters[1], 5, "block2")
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = _dense_bn_relu(x, dense_units, "fc1")
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(images, logits, name=name)


def lenet_bn(image_shape, num_classes):
    """The default teacher: a LeNet-5 shaped network with batch norm,
    conv5x5 32 -> pool -> conv5x5 64 -> pool -> dense 256 -> dropout 0.4
    (318 k parameters on MNIST). Trained with augmentation it is stronger
    than `seed_cnn` at a third of its cost per step on a CPU."""
    return _lenet_with_batch_norm("lenet_bn", image_shape, num_classes, (32, 64), 256, 0.4)


def lenet_narrow(image_shape, num_classes):
    """A teacher for CPUs: `lenet_bn`'s shape at half its channels,
    conv5x5 16 -> pool -> conv5x5 32 -> pool -> dense 128 -> dropout 0.3
    (81 k parameters on MNIST); an epoch costs half of `lenet_bn`'s on a CPU."""
    return _lenet_with_batch_norm("lenet_narrow", image_shape, num_classes, (16, 32), 128, 0.3)


def compact_cnn(image_shape, num_classes):
    """A small student: conv5x5 8 -> pool -> conv5x5 16 -> pool -> dense 32
    (12 k parameters on MNIST, under 5 % of `lenet_bn`)."""
    return _lenet_with_batch_norm("compact_cnn", image_shape, num_classes, (8, 16), 32, 0.0)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build the model, and its `choices.ModelCard`.

    Args:
        build: `build(image_shape, num_classes) -> keras.Model`.
        card: its role, description and smallest image size.
    """

    build: Callable[[tuple, int], keras.Model]
    card: choices.ModelCard

    @property
    def min_image_size(self):
        """The smallest height and width the model takes."""
        return self.card.min_image_size


_BUILDERS = {
    "lenet_bn": lenet_bn,
    "lenet_narrow": lenet_narrow,
    "seed_cnn": seed_cnn,
    "seed_mlp": seed_mlp,
    "compact_cnn": compact_cnn,
    "resnet_small": resnet_small,
    "mobilenet_small": mobilenet_small,
}
MODELS = {name: ModelSpec(_BUILDERS[name], card) for name, card in choices.MODEL_CARDS.items()}
DEFAULT_TEACHER = choices.DEFAULT_TEACHER
DEFAULT_STUDENT = choices.DEFAULT_STUDENT


def build_model(name, image_shape, num_classes):
    """Builds registered model `name` for the given data, or loads the
    architecture in the `.keras` file `name` (see `kd_tf.model_file`).

    Args:
        name: a key of `MODELS`, or the path of a `.keras` file.
        image_shape: `(H, W, C)` of the data set's images.
        num_classes: number of classes of the data set.

    Returns:
        An unbuilt-weights `keras.Model` from uint8 images to logits.

    Raises:
        ConfigError: the images are smaller than the model takes
            (`ModelSpec.min_image_size`), or the `.keras` file does not fit
            the data.
    """
    if choices.is_model_file(name):
        return model_file.load_architecture(name, tuple(image_shape), int(num_classes))
    if name not in MODELS:
        raise ValueError(choices.MODEL_PROBLEM.format(repr(name)))
    height, width = image_shape[:2]
    needed = MODELS[name].min_image_size
    if min(height, width) < needed:
        fitting = ", ".join(
            n for n, spec in MODELS.items() if spec.min_image_size <= min(height, width)
        )
        raise ConfigError(
            ("model",),
            f"{{0}}={name} needs images of at least {needed}x{needed} pixels, the data set's "
            f"are {height}x{width}: pick another {{0}} ({fitting} take them)",
            (name,),
        )
    return MODELS[name].build(tuple(image_shape), int(num_classes))
