"""Real MNIST as PNG files in Keras's class-folder layout, for `--data_source=directory`.

Writes the 70,000 images of the packaged MNIST copy
(`kd_tf.data.read_packaged_mnist()`: the original 60,000 training and 10,000
test images, in their original order) as 28x28 grayscale PNG files:

    OUT/train/<digit>/<index>.png     (index in the original training split)
    OUT/test/<digit>/<index>.png      (index in the original test split)

Indices are zero-padded to 5 digits, so that file-name order is the original
order. Pixels are stored exactly (PNG is lossless), so
`--data_source=directory --data_dir=OUT` reads the same images and labels as
`--data_source=packaged`. The tree is written into `OUT.partial` and renamed
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

SPLITS = ("train", "test")


def write_split(split, root, name):
    """Writes `split`'s images under `root/name/<digit>/<index>.png`."""
    for digit in sorted(set(split.labels.tolist())):
        os.makedirs(os.path.join(root, name, image_folders.class_folder(digit, 10)))
    for index, (image, label) in enumerate(zip(split.images, split.labels)):
        path = os.path.join(
            root, name, image_folders.class_folder(int(label), 10), f"{index:05d}.png"
        )
        Image.fromarray(image[:, :, 0]).save(path)  # 2-D uint8: mode "L"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the tree's root (must not exist)")
    args = parser.parse_args()
    started = time.perf_counter()
    splits = dict(zip(SPLITS, data.read_packaged_mnist()))
    with image_folders.built_atomically(args.out) as root:
        for name, split in splits.items():
            write_split(split, root, name)
    files, size = image_folders.tree_size(args.out)
    print(
        f"{args.out}: {files} files ({image_folders.split_counts(args.out)}), "
        f"{size} bytes ({size / 2**20:.1f} MiB), {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
