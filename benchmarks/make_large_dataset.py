"""A synthetic colour image data set of a given size on disk, as class-folder PNGs.

For issue 12's streaming acceptance: a `--data_source=directory` tree larger
than memory allows to decode whole. It writes `SIZE`x`SIZE`x3 PNG files until
their bytes on disk (the sum of the files' sizes) reach `--gigabytes`
(10^9 bytes), in Keras's layout

    OUT/train/<class>/<index>.png    (11 of every 12 images)
    OUT/test/<class>/<index>.png     (every 12th image: index % 12 == 11)

with zero-padded class folders and global indices. Each image is learnable
but noisy: stripes whose orientation is set by the class (plus jitter), a
soft blob near a class-specific position, one of the stripe colours tinted
towards a class colour, and uniform per-pixel noise of +-`--noise` grey
levels that keeps PNG from compressing the files much (about 11 KB per 64x64
file at the default noise, so about 380,000 files for 4.2 GB).

Images are drawn in batches of `--batch` from a generator seeded with
`(--seed, batch number)`, encoded with PIL and written by `--processes`
worker processes; batches are counted in order, and the first batch that
brings the total to `--gigabytes` is the last one kept (later batches
already written are removed), so the tree is a function of `--seed`,
`--batch`, `--size`, `--classes`, `--noise` and `--gigabytes` alone. It is
built in `OUT.partial` and renamed to `OUT` at the end. Prints the files,
bytes and seconds.

Usage:

```
.venv/bin/python benchmarks/make_large_dataset.py --out=/data/large --gigabytes=4.2
.venv/bin/python benchmarks/make_large_dataset.py --out=/tmp/tiny --gigabytes=0.02   # a try
```
"""

import argparse
import collections
import dataclasses
import multiprocessing
import os
import time

import image_folders
import numpy as np
from PIL import Image

TEST_EVERY = 12  # every 12th image is a test image


@dataclasses.dataclass(frozen=True)
class Layout:
    """What every batch needs to draw and place its images."""

    root: str
    seed: int
    size: int
    classes: int
    noise: int
    batch: int


def class_styles(seed, classes):
    """Per class: the stripes' angle (radians), the blob's centre (in [-1, 1]
    image coordinates) and a tint colour (0-255), fixed by `seed`."""
    rng = np.random.default_rng([seed, 2**31])
    angles = np.arange(classes) * np.pi / classes
    turns = 2 * np.pi * rng.permutation(classes) / classes
    centres = 0.5 * np.stack([np.cos(turns), np.sin(turns)], axis=1)
    tints = rng.uniform(0, 255, (classes, 3))
    return angles.astype(np.float32), centres.astype(np.float32), tints.astype(np.float32)


def draw_images(rng, labels, layout):
    """uint8 images `[len(labels), size, size, 3]` of the given classes."""
    count, size = len(labels), layout.size
    angles, centres, tints = class_styles(layout.seed, layout.classes)
    axis = np.linspace(-1, 1, size, dtype=np.float32)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    angle = angles[labels] + rng.normal(0, 0.08, count).astype(np.float32)
    cycles = rng.uniform(2.0, 4.0, count).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, count).astype(np.float32)
    along = x * np.cos(angle)[:, None, None] + y * np.sin(angle)[:, None, None]
    stripes = 0.5 + 0.5 * np.sin(np.pi * cycles[:, None, None] * along + phase[:, None, None])
    first = 0.5 * tints[labels] + 0.5 * rng.uniform(0, 255, (count, 3))
    second = rng.uniform(0, 255, (count, 3))
    image = (
        stripes[..., None] * first[:, None, None] + (1 - stripes[..., None]) * second[:, None, None]
    )
    centre = centres[labels] + rng.normal(0, 0.08, (count, 2))
    radius = rng.uniform(0.15, 0.3, count)
    distance = (x - centre[:, None, None, 1]) ** 2 + (y - centre[:, None, None, 0]) ** 2
    blob = np.exp(-distance / radius[:, None, None] ** 2)[..., None]
    image = (1 - blob) * image + blob * rng.uniform(0, 255, (count, 1, 1, 3))
    image += rng.integers(-layout.noise, layout.noise + 1, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_batch(layout, number):
    """Draws and writes batch `number`; returns `(bytes, paths)` of its files."""
    rng = np.random.default_rng([layout.seed, number])
    labels = rng.integers(0, layout.classes, layout.batch)
    images = draw_images(rng, labels, layout)
    written, paths = 0, []
    for offset, (image, label) in enumerate(zip(images, labels)):
        index = number * layout.batch + offset
        split = "test" if index % TEST_EVERY == TEST_EVERY - 1 else "train"
        folder = image_folders.class_folder(int(label), layout.classes)
        path = os.path.join(layout.root, split, folder, f"{index:08d}.png")
        Image.fromarray(image).save(path)
        written += os.path.getsize(path)
        paths.append(path)
    return written, paths


def write_until(layout, target_bytes, processes):
    """Writes batches 0, 1, ... until their bytes reach `target_bytes`; removes
    batches written past that one. Returns `(files, bytes)` kept."""
    files = size = 0
    started, reached = time.perf_counter(), False
    with multiprocessing.Pool(processes) as pool:
        pending, number = collections.deque(), 0
        while pending or not reached:
            while not reached and len(pending) < 2 * processes:
                pending.append(pool.apply_async(write_batch, (layout, number)))
                number += 1
            written, paths = pending.popleft().get()
            if reached:  # past the target: not part of the data set
                for path in paths:
                    os.remove(path)
                continue
            files, size = files + len(paths), size + written
            reached = size >= target_bytes
            if files % (50 * layout.batch) == 0 or reached:
                rate = size / (time.perf_counter() - started)
                print(
                    f"{files} files, {size / 1e9:.3f} GB, {rate / 1e6:.1f} MB/s, "
                    f"{max(0, target_bytes - size) / rate:.0f} s to go",
                    flush=True,
                )
    return files, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the tree's root (must not exist)")
    parser.add_argument("--gigabytes", type=float, default=4.2, help="bytes on disk, in 10^9")
    parser.add_argument("--size", type=int, default=64, help="image height and width")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--noise", type=int, default=40, help="per-pixel noise, +- grey levels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=500, help="images per batch")
    parser.add_argument("--processes", type=int, default=min(2, os.cpu_count()))
    args = parser.parse_args()
    started = time.perf_counter()
    with image_folders.built_atomically(args.out) as root:
        for split in ("train", "test"):
            for label in range(args.classes):
                os.makedirs(
                    os.path.join(root, split, image_folders.class_folder(label, args.classes))
                )
        layout = Layout(root, args.seed, args.size, args.classes, args.noise, args.batch)
        files, size = write_until(layout, args.gigabytes * 1e9, args.processes)
    seconds = time.perf_counter() - started
    print(
        f"{args.out}: {files} files ({image_folders.split_counts(args.out)}), {size} bytes "
        f"({size / 1e9:.3f} GB, {size / files / 1024:.1f} KiB a file), {seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
