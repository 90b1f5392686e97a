"""Atomic file writes: a crash or a full disk never leaves half a file behind."""
from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)``, flush it to disk, then rename it over ``path``.

    A crash (kill -9, power loss) or an IO error (disk full) at any point leaves either the
    previous ``path`` or the new one, never half a file; the temporary file is
    removed on an exception.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    # created here with mode 0o666 so that the kernel applies the process umask, as for any
    # new file (no process-wide umask() call, which would race with other threads' writes)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except Exception as err:  # disk full, file too large, IO error: torch and safetensors wrap the OSError
        Path(tmp).unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        reason = err.strerror if isinstance(err, OSError) and err.strerror else f"{type(err).__name__}: {err}"
        code = err.errno if isinstance(err, OSError) and err.errno else errno.EIO
        raise OSError(code, f"could not write {path} ({reason}); {kept}") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power loss
    finally:
        os.close(directory)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a small text file (config, summary, log table) through :func:`atomic_write`."""
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path
