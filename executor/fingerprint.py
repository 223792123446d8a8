"""Cache keys. One canonical encoding per value type, extended with `canonical.register`.

A node's signature is the hash of (node type, node version, canonical constant inputs, the
signatures and slots of its upstream nodes, and for volatile nodes their fingerprint). Node ids
are not part of it, so the same sub-chain under other ids shares results.
"""
from __future__ import annotations

import functools
import hashlib
import json
from typing import Any


class Uncacheable(TypeError):
    """A constant with no canonical form: the node cannot be cached (never a silent collision)."""


@functools.singledispatch
def canonical(value: Any) -> Any:
    raise Uncacheable(f"no canonical form for {type(value).__name__}")


@canonical.register(type(None))
@canonical.register(bool)
@canonical.register(int)
@canonical.register(str)
def _(value: Any) -> Any:
    return value


@canonical.register(float)
def _(value: float) -> Any:
    # Whole floats and ints differ in type, so 1.0 and 1 must not share a key.
    return {"float": repr(value)}


@canonical.register(list)
@canonical.register(tuple)
def _(value: Any) -> Any:
    return [canonical(v) for v in value]


@canonical.register(dict)
def _(value: dict) -> Any:
    return {"dict": sorted((str(k), canonical(v)) for k, v in value.items())}


def signature(node_type: str, version: int, constants: dict[str, Any], upstream: dict[str, tuple[str, int]],
              fingerprint: str | None = None) -> str:
    """Content address of a node's result."""
    payload = {
        "type": node_type,
        "version": version,
        "constants": sorted((k, canonical(v)) for k, v in constants.items()),
        "upstream": sorted((k, list(v)) for k, v in upstream.items()),
        "fingerprint": fingerprint,
    }
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()
