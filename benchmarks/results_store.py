"""The JSON files where the benchmark runners keep their finished runs.

A run is recorded as soon as it ends, merged into the file as it is on disk at that moment
(another invocation may be running other rows beside this one) and written atomically, so
an interrupted runner loses at most the run it was in, and a rerun skips what is there.
The read-merge-write holds an exclusive lock on a sidecar file (``<name>.lock``), so two
runners recording at the same moment both keep their rows.
"""
from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

from deit.core.fileio import write_text_atomic


def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def record_result(path: Path, keys: tuple[str, ...], value: dict[str, Any]) -> dict[str, Any]:
    """Store ``value`` at ``results[keys[0]]...[keys[-1]]`` of the file; the merged results."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = load_results(path)
        node = results
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
        write_text_atomic(path, json.dumps(results, indent=2) + "\n")
    return results
