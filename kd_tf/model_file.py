"""A `.keras` file as the architecture to train: `--model=PATH.keras`.

The file is loaded with `keras.saving.load_model(path, safe_mode=True,
compile=False)`, so a file with a Lambda layer (arbitrary code) is refused,
and training starts from the weights the file holds. The model must take
uint8 or float images `[batch, H, W, C]` of the data set's image shape (a
`None` size takes any) and return logits `[batch, num_classes]`; a float
input gets the raw pixels 0-255 cast to its dtype, through a uint8 input put
in front of it, so that exports follow the serving contract.

Usage:

```python
model = model_file.load_architecture("net.keras", image_shape=(32, 32, 3), num_classes=10)
```
"""

import os

import keras

from kd_tf.errors import ConfigError
from kd_tf.export.contract import FLOAT_INPUT_DTYPES, short_reason

_INPUT_DTYPES = ("uint8", *FLOAT_INPUT_DTYPES)


def _refuse(path, problem):
    return ConfigError(("model",), f"{{0}}={path} {problem}", (path,))


def _shape(shape):
    return "x".join("?" if size is None else str(size) for size in shape)


def load_architecture(path, image_shape, num_classes):
    """The model in the `.keras` file `path`, checked against the data.

    Args:
        path: a `.keras` file.
        image_shape: `(H, W, C)` of the data set's images.
        num_classes: number of classes of the data set.

    Returns:
        A `keras.Model` from uint8 images `[batch, H, W, C]` to logits, with
        the file's weights.

    Raises:
        ConfigError: the file is missing or cannot be loaded with
            `safe_mode=True`, or its input or output does not fit the data.
    """
    if not os.path.isfile(path):
        raise _refuse(path, "does not exist: pass a registry name or a .keras file")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # Keras raises ValueError, TypeError, ... for a bad file.
        raise _refuse(
            path,
            f"could not be loaded with safe_mode=True ({short_reason(e)}): re-save it without "
            "Lambda layers or custom objects",
        ) from e
    inputs, outputs = getattr(model, "inputs", None) or [], getattr(model, "outputs", None) or []
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise _refuse(path, "must take a single image input [batch, H, W, C]: re-save it")
    dtype = keras.backend.standardize_dtype(inputs[0].dtype)
    taken = tuple(inputs[0].shape[1:])
    if dtype not in _INPUT_DTYPES or any(
        size is not None and size != wanted for size, wanted in zip(taken, image_shape)
    ):
        raise _refuse(
            path,
            f"takes {dtype} images {_shape(taken)}, the data set's are uint8 "
            f"{_shape(image_shape)}: re-save it with a uint8 or float input of that shape",
        )
    if len(outputs) != 1 or tuple(outputs[0].shape[1:]) != (num_classes,):
        found = [_shape(output.shape[1:]) for output in outputs]
        raise _refuse(
            path,
            f"must output logits [batch, {num_classes}] for the data set's {num_classes} "
            f"classes, it outputs {found}: re-save it with one such output",
        )
    if dtype == "uint8":
        return model
    images = keras.Input(shape=tuple(image_shape), dtype="uint8", name="images")
    return keras.Model(images, model(images), name=model.name)
