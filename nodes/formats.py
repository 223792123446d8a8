"""Versions of Sumi's saved files, and the migrations that keep old ones loading.

Sumi stamps what it saves: an editor graph carries `extra.sumi.format_version`, a saved API prompt (the
`POST /prompt` body shape) a top-level `sumi.format_version`, a PNG's `sumi` chunk its own `format_version`.
A file without a stamp is version 0 (ComfyUI's files and Sumi's before versions existed). Loading runs every
migration from the file's version up to the current one, in order; a file from a newer Sumi is refused with
a clear message rather than misread. Every format change adds one function to MIGRATIONS and a fixture under
tests/fixtures/formats/ written by the previous version.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

FORMAT_VERSION = 1


class NewerFormat(ValueError):
    """A file written by a newer Sumi than this one."""


def _v0_to_v1(data: dict[str, Any]) -> dict[str, Any]:
    # Version 1 only added the stamp itself (and the `models` manifest, which ComfyUI's format already had).
    return data


# MIGRATIONS[n] turns a version-n document into version n + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _v0_to_v1}


def _sumi(data: dict[str, Any], create: bool = False) -> dict[str, Any] | None:
    """The dict holding the stamp: `extra.sumi` of an editor graph, `sumi` of anything else."""
    if isinstance(data.get("nodes"), list):
        if create:
            data["extra"] = dict(data.get("extra") or {})
            data["extra"]["sumi"] = dict(data["extra"].get("sumi") or {})
        holder = (data.get("extra") or {}).get("sumi")
    else:
        if create:
            data["sumi"] = dict(data.get("sumi") or {})
        holder = data.get("sumi")
    return holder if isinstance(holder, dict) else None


def version_of(data: dict[str, Any]) -> int:
    holder = _sumi(data)
    value = (holder or {}).get("format_version", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def stamp(data: dict[str, Any]) -> dict[str, Any]:
    """A copy carrying the current format version."""
    out = copy.copy(data)
    holder = _sumi(out, create=True)
    assert holder is not None
    holder["format_version"] = FORMAT_VERSION
    return out


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a loaded document to the current version (a copy when anything changes)."""
    version = version_of(data)
    if version > FORMAT_VERSION:
        raise NewerFormat(f"this file has Sumi format version {version}; this Sumi reads up to "
                          f"{FORMAT_VERSION}: update Sumi to open it")
    if version == FORMAT_VERSION:
        return data
    out = copy.deepcopy(data)
    while version < FORMAT_VERSION:
        out = MIGRATIONS[version](out)
        version += 1
    return stamp(out)
