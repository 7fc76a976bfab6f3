"""Real MNIST as PNG files in Keras's class-folder layout, for `--data_source=directory`.

Writes the 70,000 images of the packaged MNIST copy
(`kd_tf.data.read_packaged_mnist()`: the original 60,000 training and 10,000
test images, in their original order) as 28x28 grayscale PNG files:

    OUT/train/<digit>/<index>.png       (index in the original training split)
    OUT/validation/<digit>/<index>.png  (its last 5,000: the packaged validation split)
    OUT/test/<digit>/<index>.png        (index in the original test split)

Indices are zero-padded to 5 digits, so that file-name order is the original
order. Pixels are stored exactly (PNG is lossless), and the validation
folder holds the images `--data_source=packaged` holds out for validation
(the last `default_validation_examples(60000)` = 5,000), so
`--data_source=directory --data_dir=OUT` trains, selects its epoch and tests
on the same images and labels as `--data_source=packaged`; only their order
differs (class folders, then the directory source's fixed shuffle). The tree is written into `OUT.partial` and renamed
to `OUT` at the end (`image_folders.built_atomically`): a killed run leaves no
`OUT`. Prints the file count, bytes and seconds; nothing but image files
goes into `OUT`.

Usage:

```
.venv/bin/python benchmarks/mnist_as_files.py --out=/tmp/mnist_files
```
"""

import argparse
import os
import time

import image_folders
from PIL import Image

from kd_tf import data
from kd_tf.data import splits


def write_split(split, root, name, first_index=0):
    """Writes `split`'s images under `root/name/<digit>/<index>.png`, the
    first one numbered `first_index`."""
    for digit in sorted(set(split.labels.tolist())):
        os.makedirs(os.path.join(root, name, image_folders.class_folder(digit, 10)))
    for index, (image, label) in enumerate(zip(split.images, split.labels), first_index):
        path = os.path.join(
            root, name, image_folders.class_folder(int(label), 10), f"{index:05d}.png"
        )
        Image.fromarray(image[:, :, 0]).save(path)  # 2-D uint8: mode "L"


def folder_splits():
    """`{folder: (split, first index)}`: the packaged copy's training images
    less its validation split, the validation split, the test images."""
    train, test = data.read_packaged_mnist()
    cut = len(train) - splits.default_validation_examples(len(train))
    return {
        "train": (train.subset(0, cut), 0),
        "validation": (train.subset(cut, len(train)), cut),
        "test": (test, 0),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the tree's root (must not exist)")
    args = parser.parse_args()
    started = time.perf_counter()
    with image_folders.built_atomically(args.out) as root:
        for name, (split, first_index) in folder_splits().items():
            write_split(split, root, name, first_index)
    files, size = image_folders.tree_size(args.out)
    print(
        f"{args.out}: {files} files ({image_folders.split_counts(args.out)}), "
        f"{size} bytes ({size / 2**20:.1f} MiB), {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
