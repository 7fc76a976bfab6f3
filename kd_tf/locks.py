"""Exclusive locks a process holds while it lives (`flock`), and whether a process lives.

A `flock` belongs to an open file description: the kernel releases it when
its holder closes the file or ends, however it ends (a SIGKILL, a crash), so
a lock left by a process that is gone is free to take: there is no stale
lock to clean up by hand.

`LockFile` is a lock on a file named for what it guards (a backup directory);
it records its holder's process id, so that a process refused the lock can
name the one that holds it. `try_lock` locks an open descriptor (a shard
directory of `kd_tf.logits_cache`); `process_alive` tells whether a process
id names a running process.

Usage:

```python
lock = locks.LockFile.acquire(os.path.join(directory, ".lock"))
if lock is None:
    print("in use by process", locks.holder(os.path.join(directory, ".lock")))
else:
    try:
        work_in(directory)
    finally:
        lock.release()
```
"""

import errno
import fcntl
import os


def process_alive(pid):
    """Whether a process with id `pid` runs (in this PID namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def try_lock(descriptor):
    """Takes an exclusive `flock` on an open descriptor without waiting.

    Returns:
        False if another open file description holds it; True once taken
        (also where the file system has no locks).
    """
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        return error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN)
    return True


def holder(path):
    """The process id recorded in the lock file `path`, or None."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class LockFile:
    """An exclusive lock on the file `path`, held until `release()`.

    Acquiring creates the file and writes this process's id into it;
    releasing removes it. A lock file whose holder ended is taken over.
    """

    def __init__(self, path, descriptor):
        self.path = path
        self._descriptor = descriptor

    @classmethod
    def acquire(cls, path):
        """The lock of `path` (its directory must exist), or None when a
        live process holds it.

        Raises:
            OSError: the file cannot be created.
        """
        while True:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if not try_lock(descriptor):
                os.close(descriptor)
                return None
            if _names(path, descriptor):
                os.ftruncate(descriptor, 0)
                os.write(descriptor, f"{os.getpid()}\n".encode())
                return cls(path, descriptor)
            # Its holder removed the file between our open and our lock: the
            # lock taken is of a file no longer there; try the path again.
            os.close(descriptor)

    def release(self):
        """Removes the lock file and releases the lock (once)."""
        if self._descriptor is None:
            return
        try:
            if _names(self.path, self._descriptor):
                os.remove(self.path)
        finally:
            os.close(self._descriptor)
            self._descriptor = None


def _names(path, descriptor):
    """Whether `path` still names the file open at `descriptor`."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)
