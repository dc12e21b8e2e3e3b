"""Small file helpers: nothing half-written on disk after a crash."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
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


def save_or_check_config(folder: str | Path, config: dict, budget_key: str,
                         read_stored: Callable[[dict], dict] | None = None,
                         free: tuple[str, ...] = ("device", "graphs")) -> None:
    """Write ``folder/config.json``; if one is there (a run being resumed), it must match
    ``config`` in everything but ``budget_key`` (a run may be resumed with a larger budget) and
    the ``free`` keys (where it runs, not what it computes). The stored config is first read as
    the config class reads it today (``read_stored``, e.g. :func:`stored_reader`): a key it lacks
    (a field added since the run started) takes the value it meant then, and the class's own
    normalisation applies, so a stored config matches the one its class would write now."""
    path = Path(folder) / "config.json"
    config = json.loads(json.dumps(config))  # compare as stored: tuples become lists
    if path.is_file():
        stored = json.loads(path.read_text())
        if read_stored is not None and isinstance(stored, dict):
            try:
                stored = json.loads(json.dumps(read_stored(stored)))
            except (TypeError, ValueError):
                pass  # a config the class cannot read any more: compared as written, so the keys that differ are named
        skip = {budget_key, *free}
        old = {k: v for k, v in stored.items() if k not in skip}
        new = {k: v for k, v in config.items() if k not in skip}
        for k in ("dataset",):  # a file named by a relative and by an absolute path is the same data
            if k in old and k in new and old[k] != new[k] and _same_file(old[k], new[k]):
                new[k] = old[k]
        if old != new:
            diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise ValueError(f"{folder} holds a run with another config (differs in {diff}); use a new folder")
    atomic_write(path, json.dumps(config, indent=2).encode())


def stored_reader(cls: type) -> Callable[[dict], dict]:
    """How a stored config of dataclass ``cls`` reads today, as the dict ``cls`` would save now:
    through ``cls`` itself, with ``cls.SAVED_BEFORE``'s values for keys it lacks whose default
    has changed since they were added (the other missing keys take their defaults), so ``cls``'s
    own normalisation applies to it as to a new config (an offline-RL BC run's ``eta`` is None
    whatever an old file says)."""
    from dataclasses import asdict

    def read(raw: dict) -> dict:
        return asdict(cls(**fill_saved(cls, raw)))

    return read


def _same_file(a: object, b: object) -> bool:
    """``a`` and ``b`` are paths to one existing file (either may be relative to the working
    folder)."""
    try:
        return isinstance(a, str) and isinstance(b, str) and Path(a).is_file() and Path(a).samefile(b)
    except OSError:
        return False


def fill_saved(cls: type, raw: dict) -> dict:
    """A stored config ``raw`` with ``cls.SAVED_BEFORE``'s values for the keys it lacks."""
    return {**{k: v for k, v in getattr(cls, "SAVED_BEFORE", {}).items() if k not in raw}, **raw}


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


def read_json(path: str | Path, what: str = "file") -> object:
    """``json.loads`` of ``path``; an unreadable or invalid file is one ``ValueError`` naming it
    (a missing one stays ``FileNotFoundError``)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON {what} ({e})") from None


def config_from_json(cls: type, path: str | Path, kind: str) -> object:
    """A run's config dataclass ``cls`` from its ``config.json``; one ``ValueError`` naming the
    file for invalid JSON, keys of another kind of run (``kind`` names what ``cls`` is for), or
    a value ``cls`` rejects."""
    from dataclasses import fields

    raw = read_json(path, "run config")
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: empty or not a run config")
    raw = fill_saved(cls, raw)
    names = {f.name for f in fields(cls)}
    unknown, missing = sorted(set(raw) - names), sorted(set(required_fields(cls)) - set(raw))
    if unknown or missing:
        raise ValueError(f"{path}: not the config of {kind} run (unknown keys {unknown}, missing {missing})")
    try:
        check_types(cls, raw, str(path))
        return cls(**raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def required_fields(cls: type) -> list[str]:
    """The fields of dataclass ``cls`` a caller must give (no default): the complement of
    :func:`dataclass_defaults`."""
    from dataclasses import fields

    defaults = dataclass_defaults(cls)
    return [f.name for f in fields(cls) if f.init and f.name not in defaults]


def _matches(value: object, tp: object) -> bool:
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any or tp is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know: the dataclass's own checks decide


def _type_name(tp: object) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def check_types(cls: type, values: dict, where: str) -> None:
    """Each value in ``values`` has its dataclass field's annotated type (an int where an int is
    due: ``"200"`` or ``0.5`` is not a step count; a list of ints for ``tuple[int, ...]``), or one
    ``ValueError`` naming ``where`` and the key."""
    import typing

    hints = typing.get_type_hints(cls)
    for k, v in values.items():
        if k in hints and not _matches(v, hints[k]):
            raise ValueError(f"{where}: {k} = {v!r} is not of type {_type_name(hints[k])}")


def fingerprint(arrays: list) -> str:
    """A short sha256 of numpy arrays' dtypes, shapes and bytes, in order: which data a run saw."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
