"""A short identity of the data a run reads, so that a backup resumes only on the same data.

`fingerprint(splits)` digests, split by split (train, validation, test), the
labels and what the images are read from: the images themselves when the
split is held in memory, the list of its files with their sizes when it is
streamed (image files, TFRecords: `StreamedSplit.reader.files`). Other data
in the same folder, another `--idx_dir`, a file added, removed, renamed or
resized, another slice of the data all change it; a streamed file rewritten
with the same size does not (reading every file again would cost a pass
over the data), and neither does a file put back as it was, so that a run
whose data changed under it can resume once the data is restored. A TFDS
split streamed from its files is known by its labels (and, in the run's
fields, by its name and data directory).

Usage:

```python
fields = run_identity.run_fields(settings, "scratch", "seed_mlp", data=fingerprint(splits))
# e.g. "61440 examples, sha256 3f2a9c0d41b7e6a5"
```
"""

import hashlib
import os

import numpy as np


def fingerprint(splits):
    """`"<examples> examples, sha256 <16 hex digits>"` of a `DataSplits`
    (see the module doc)."""
    digest = hashlib.sha256()
    examples = 0
    for split in (splits.train, splits.validation, splits.test):
        examples += len(split)
        digest.update(f"{len(split)} {split.image_shape}\n".encode())
        digest.update(np.ascontiguousarray(split.labels, np.int64).tobytes())
        if split.in_memory:
            digest.update(np.ascontiguousarray(split.images).data)
        else:
            for path in split.reader.files:
                digest.update(f"{path}\0{_size(path)}\n".encode())
    return f"{examples} examples, sha256 {digest.hexdigest()[:16]}"


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return "missing"
