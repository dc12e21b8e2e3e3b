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


def save_or_check_config(folder: str | Path, config: dict, budget_key: str, defaults: dict | None = None,
                         free: tuple[str, ...] = ("device",)) -> None:
    """Write ``folder/config.json``; if one is there (a run being resumed), it must match
    ``config`` in everything but ``budget_key`` (a run may be resumed with a larger budget) and
    the ``free`` keys (where it runs, not what it computes). A key the stored config lacks (a
    field added since the run started) matches when ``config`` holds its default from ``defaults``."""
    path = Path(folder) / "config.json"
    config = json.loads(json.dumps(config))  # compare as stored: tuples become lists
    if path.is_file():
        stored = json.loads(path.read_text())
        filled = {**json.loads(json.dumps({k: v for k, v in (defaults or {}).items() if k not in stored})), **stored}
        skip = {budget_key, *free}
        old = {k: v for k, v in filled.items() if k not in skip}
        new = {k: v for k, v in config.items() if k not in skip}
        if old != new:
            diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise ValueError(f"{folder} holds a run with another config (differs in {diff}); use a new folder")
    atomic_write(path, json.dumps(config, indent=2).encode())


def dataclass_defaults(cls: type) -> dict:
    """``{field: default}`` for the fields of dataclass ``cls`` that have one."""
    from dataclasses import MISSING, fields

    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out
