"""Naming and writing output files as ComfyUI does: `{prefix}_{counter:05}_.ext`, prefix may hold subfolders."""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from executor.fingerprint import Uncacheable

from . import paths
from .paths import resolve_within


def expand_prefix(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    for key, value in {"width": width, "height": height, "year": now.tm_year, "month": f"{now.tm_mon:02}",
                       "day": f"{now.tm_mday:02}", "hour": f"{now.tm_hour:02}", "minute": f"{now.tm_min:02}",
                       "second": f"{now.tm_sec:02}"}.items():
        prefix = prefix.replace(f"%{key}%", str(value))
    return prefix


def next_counter(folder: Path, stem: str, ext: str) -> int:
    """One more than the largest counter already used for this stem (1 when none)."""
    pattern = re.compile(re.escape(stem) + r"_(\d+)_?\." + re.escape(ext) + "$")
    used = [int(m.group(1)) for f in (os.listdir(folder) if folder.is_dir() else []) if (m := pattern.match(f))]
    return max(used, default=0) + 1


def output_slot(root: Path, prefix: str, ext: str, width: int = 0, height: int = 0) -> tuple[Path, str, str, int]:
    """(folder, stem, subfolder, first counter) for a prefix; refuses prefixes that leave `root`."""
    prefix = expand_prefix(prefix, width, height)
    subfolder, _, stem = prefix.replace("\\", "/").rpartition("/")
    folder = resolve_within(root, subfolder) if subfolder else root.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder, stem, subfolder, next_counter(folder, stem, ext)


def metadata_chunks(prompt: dict[str, Any] | None, extra_pnginfo: dict[str, Any] | None) -> dict[str, str]:
    """PNG/safetensors text metadata: `prompt` and one entry per extra_pnginfo key (normally `workflow`)."""
    chunks = {"prompt": json.dumps(prompt)} if prompt is not None else {}
    for key, value in (extra_pnginfo or {}).items():
        chunks[key] = json.dumps(value)
    return chunks


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_fingerprint(name: str) -> str:
    """A volatile loader's fingerprint: the input file's hash. A file gone since validation makes the node
    uncacheable, so it runs and fails as that node's error rather than breaking the whole run."""
    try:
        return file_sha256(resolve_within(paths.FOLDERS.input, name))
    except OSError as exc:
        raise Uncacheable(str(exc)) from exc
