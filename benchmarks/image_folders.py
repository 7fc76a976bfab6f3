"""Image-folder trees for the benchmarks: written whole or not at all, and measured.

A tree is built in `<out>.partial` and renamed to `<out>` only once every file
is written, so a killed run leaves `<out>.partial` (removed by the next run)
and never a half tree at `<out>`. Class folders are named so that their
sorted order is their numeric order (`class_folder`), and file names are
zero-padded indices, so that name order is index order.

Usage (from another script in `benchmarks/`):

```python
import image_folders

with image_folders.built_atomically("/data/mnist_files") as root:
    ...  # write root/train/<class>/<name>.png and root/test/...
files, size = image_folders.tree_size("/data/mnist_files")
```
"""

import contextlib
import os
import shutil

PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def built_atomically(out):
    """Yields `<out>.partial` to write the tree into; renames it to `out` when
    the block ends without an error. Refuses an existing `out`; removes a
    `<out>.partial` left by a killed run."""
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise SystemExit(f"{out} already exists: remove it or pass another --out")
    partial = out + PARTIAL_SUFFIX
    if os.path.exists(partial):
        print(f"removing {partial}, left by an earlier run that did not finish", flush=True)
        shutil.rmtree(partial)
    os.makedirs(partial)
    yield partial
    os.rename(partial, out)


def class_folder(label, classes):
    """The folder name of class `label` of `classes`: its number, zero-padded
    to the width of the largest (`"7"` of 10, `"07"` of 100)."""
    return f"{label:0{len(str(classes - 1))}d}"


def tree_size(root):
    """`(files, bytes)`: the regular files under `root` and the sum of their sizes."""
    files = size = 0
    for folder, _, names in os.walk(root):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(folder, name))
    return files, size


def split_counts(root):
    """`{split: files}` of the `train/`, `validation/` and `test/` folders of a tree."""
    return {
        split: tree_size(os.path.join(root, split))[0]
        for split in ("train", "validation", "test")
        if os.path.isdir(os.path.join(root, split))
    }
