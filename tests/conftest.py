"""pytest setup and fixtures shared by the kd_tf tests.

Layout: `tests/test_<module>.py` tests one kd_tf module quickly, on synthetic
arrays, untrained models, data files or refusals that stop before training;
`tests/test_stages*.py` run stages end to end on slices of real MNIST, in
process (`stages.run`, `main.run_command`) or as `python -m kd_tf.main`
processes. Shared helpers are in tests/helpers.py.

Fixtures for `tf.test.TestCase` classes (`@pytest.mark.usefixtures(...)`;
they run after the class's `setUpClass`, so class set-up that needs them is
a class-scoped fixture too):

- `class_root`: a temporary directory as `cls.root`, removed after the class.
- `class_teacher`: `mnist_teacher` as `cls.teacher`.
- `digit_files`: image files of MNIST test digits (`cls.images_dir`, ...).
- `mnist_teacher`: one small teacher export on real MNIST per session.

A class that runs stages or processes end to end is marked `slow`
(pytest.ini), so that it runs before the quick ones.
"""

import atexit
import contextlib
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Every temporary file and directory of a test process (tempfile's,
# TensorFlow's, tensorflow-datasets' where a test calls it, and those of the
# kd_tf processes it starts, through TMPDIR) goes into one directory of its
# own, removed when the process exits: a run of the suite leaves nothing in
# the system's temporary directory. xdist's workers inherit the TMPDIR of the
# main process and make theirs inside it. Registered before TensorFlow's own
# exit handlers, it runs after them (atexit runs the last registered first),
# so TensorFlow still finds the directories it removes.
SESSION_TMPDIR = tempfile.mkdtemp(prefix="kd_tf_tests-")
os.environ["TMPDIR"] = tempfile.tempdir = SESSION_TMPDIR
atexit.register(shutil.rmtree, SESSION_TMPDIR, ignore_errors=True)


def _share_the_cores():
    """Gives each xdist worker its own share of this process's cores (of 2
    cores and 2 workers, one each), which the kd_tf processes it starts
    inherit. kd_tf sizes TensorFlow's thread pools by the cores it may use
    (kd_tf.cpu), so two workers do not run twice as many threads as there
    are cores (docs/precision-and-speed.md, Testing on another CPU), and a
    test's process and the processes it compares itself with run the same
    threads."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if worker and workers > 1 and len(cores) > 1:
        share = cores[int(worker[2:]) % len(cores) :: workers]
        os.sched_setaffinity(0, share)


_share_the_cores()

from kd_tf import cpu

# As `python -m kd_tf.main` does before TensorFlow loads: the tests run in
# process the kernels a user's process runs (oneDNN's on an AVX2 CPU, where
# TensorFlow would otherwise take its own), so that a run in process and one
# in a fresh process can be compared bit for bit.
cpu.prefer_onednn()

import helpers
import pytest

from kd_tf import data, distribution, stages

# Logical devices can only be configured before TensorFlow initialises its
# devices, i.e. before the first test runs an op; two CPU devices let
# tests/test_stages_distribution.py run MirroredStrategy with 2 replicas
# in-process. Everything else places its ops on the first device, as with one.
TEST_CPU_DEVICES = 2
distribution.configure_cpu_devices(TEST_CPU_DEVICES)


@contextlib.contextmanager
def _temporary_root():
    root = tempfile.mkdtemp(prefix="kd_tf_test-")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mnist_teacher():
    """The session's teacher (`helpers.TEACHER_ARGV` on `helpers.SLICE`), trained
    once through `stages.run`: a `helpers.TrainedExport`."""
    with _temporary_root() as root:
        yield helpers.TrainedExport(
            root, stages.run(helpers.slice_config(root, *helpers.TEACHER_ARGV))
        )


@pytest.fixture(scope="class")
def class_root(request):
    """A fresh temporary directory as `cls.root`, removed after the class."""
    with _temporary_root() as root:
        request.cls.root = root
        yield root


@pytest.fixture(scope="class")
def class_teacher(request, mnist_teacher):
    """The session's teacher as `cls.teacher`."""
    request.cls.teacher = mnist_teacher
    return mnist_teacher


@pytest.fixture(scope="class")
def digit_files(request, class_root):
    """`helpers.write_digit_files` of the MNIST test split in
    `<root>/images`: `cls.test` (the split), `cls.images_dir`, `cls.files`."""
    cls = request.cls
    cls.test = data.read_packaged_mnist()[1]
    cls.images_dir = os.path.join(class_root, "images")
    cls.files = helpers.write_digit_files(cls.images_dir, cls.test.images[:7])


def pytest_collection_modifyitems(config, items):
    # tf.test.TestCase defines a deprecated `test_session` context manager that
    # pytest would otherwise collect as a (skipped) test of every class.
    items[:] = [item for item in items if item.name != "test_session"]
    # `slow` classes first (a stable sort keeps the order otherwise): xdist
    # (pytest.ini) then hands the long classes out early and the short ones
    # fill in, instead of the longest class starting last on one worker.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
