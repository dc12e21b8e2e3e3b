"""Small file helpers: nothing half-written on disk after a crash."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_or_check_config(folder: str | Path, config: dict, budget_key: str) -> None:
    """Write ``folder/config.json``; if one is there (a run being resumed), it must match
    ``config`` in everything but ``budget_key`` (a run may be resumed with a larger budget)."""
    path = Path(folder) / "config.json"
    config = json.loads(json.dumps(config))  # compare as stored: tuples become lists
    if path.is_file():
        old = {k: v for k, v in json.loads(path.read_text()).items() if k != budget_key}
        new = {k: v for k, v in config.items() if k != budget_key}
        if old != new:
            diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise ValueError(f"{folder} holds a run with another config (differs in {diff}); use a new folder")
    atomic_write(path, json.dumps(config, indent=2).encode())
