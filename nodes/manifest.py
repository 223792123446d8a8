"""Model manifests: which model files a workflow uses, by name, folder and sha256, and finding them again.

A saved workflow carries ComfyUI's `models` list (`name`, `directory`, `hash`, `hash_type: "sha256"`, `url`
when known). On open each entry is resolved by hash first, so a file renamed on the receiver's disk is found
and the prompt is pointed at it; what is still missing is reported in one list before anything runs.

Hashes live in a persistent index (SQLite, `USER_DIR/model_hashes.db`) keyed by the file's resolved path, size
and modification time: a file is hashed once, and again only when it changes. Hashing reads large blocks on a
reader thread while the main thread hashes (hashlib releases the GIL), which keeps pace with the disk.

Which inputs name model files is declared by the node classes themselves: `model_files = {input: folder}`.
"""
from __future__ import annotations

import hashlib
import importlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import paths

BLOCK = 8 << 20  # 8 MiB reads: large enough that syscalls and Python overhead vanish against the hashing


def hash_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """sha256 of a file, reading on a background thread while this one hashes; `progress(bytes)` per block."""
    digest = hashlib.sha256()
    free: queue.Queue[bytearray] = queue.Queue()
    full: queue.Queue[tuple[bytearray, int] | BaseException | None] = queue.Queue()
    for _ in range(3):
        free.put(bytearray(BLOCK))

    def reader() -> None:
        try:
            with open(path, "rb", buffering=0) as f:
                while True:
                    buf = free.get()
                    n = f.readinto(buf)
                    if not n:
                        break
                    full.put((buf, n))
            full.put(None)
        except BaseException as exc:  # surfaces in the hashing thread
            full.put(exc)

    thread = threading.Thread(target=reader, name="sumi-hash-reader", daemon=True)
    thread.start()
    while True:
        item = full.get()
        if item is None:
            break
        if isinstance(item, BaseException):
            raise item
        buf, n = item
        digest.update(memoryview(buf)[:n])
        free.put(buf)
        if progress:
            progress(n)
    thread.join()
    return digest.hexdigest()


class HashIndex:
    """Persistent sha256 index keyed by (resolved path, size, mtime_ns). `computed` counts real hashings."""

    def __init__(self, db: Path | None = None) -> None:
        self.path = Path(db) if db else paths.FOLDERS.user / "model_hashes.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                        "mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, hashed_at REAL NOT NULL)")
        self.db.commit()
        self.lock = threading.Lock()
        self.computed = 0

    def close(self) -> None:
        self.db.close()

    @staticmethod
    def _key(path: Path) -> tuple[str, int, int]:
        real = Path(path).resolve()
        st = real.stat()
        return str(real), st.st_size, st.st_mtime_ns

    def known(self, path: Path) -> str | None:
        """The stored hash if the file is unchanged since it was hashed, else None (nothing is read)."""
        key, size, mtime = self._key(path)
        with self.lock:
            row = self.db.execute("SELECT size, mtime_ns, sha256 FROM hashes WHERE path = ?", (key,)).fetchone()
        return row[2] if row and row[0] == size and row[1] == mtime else None

    def sha256(self, path: Path, progress: Callable[[int], None] | None = None) -> str:
        """The file's hash, from the index when unchanged, else computed once and stored."""
        cached = self.known(path)
        if cached is not None:
            return cached
        key, size, mtime = self._key(path)
        digest = self._moved(size, mtime)
        if digest is None:
            digest = hash_file(Path(key), progress)
            self.computed += 1
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)",
                            (key, size, mtime, digest, time.time()))
            self.db.commit()
        return digest

    def _moved(self, size: int, mtime: int) -> str | None:
        """A renamed or moved file keeps its size and modification time: take the hash of an indexed path with
        both that no longer exists, rather than reading gigabytes again."""
        with self.lock:
            rows = self.db.execute("SELECT path, sha256 FROM hashes WHERE size = ? AND mtime_ns = ?",
                                   (size, mtime)).fetchall()
        return next((sha for old, sha in rows if not Path(old).exists()), None)


_INDEX: HashIndex | None = None


def index() -> HashIndex:
    """The process-wide index for the configured user directory."""
    global _INDEX
    wanted = paths.FOLDERS.user / "model_hashes.db"
    if _INDEX is None or _INDEX.path != wanted:
        _INDEX = HashIndex(wanted)
    return _INDEX


def model_file_inputs() -> dict[str, dict[str, str]]:
    """class_type → {input name: model folder}, from the `model_files` the node classes declare."""
    from . import NODE_MODULES

    out: dict[str, dict[str, str]] = {}
    for module in NODE_MODULES:
        try:
            classes = importlib.import_module(module).NODES
        except Exception:  # a node module that fails to import is reported by the registry, not here
            continue
        for cls in classes:
            if getattr(cls, "model_files", None):
                out[cls.type] = dict(cls.model_files)
    return out


@dataclass
class ModelUse:
    node_id: str
    class_type: str
    input_name: str
    directory: str
    name: str


def model_uses(prompt: dict[str, Any]) -> list[ModelUse]:
    """Every (node, input) of an API prompt that names a model file, in node order."""
    inputs = model_file_inputs()
    uses = []
    for nid, node in prompt.items():
        if not isinstance(node, dict):
            continue
        for name, folder in inputs.get(str(node.get("class_type")), {}).items():
            value = (node.get("inputs") or {}).get(name)
            if isinstance(value, str):
                uses.append(ModelUse(str(nid), str(node["class_type"]), name, folder, value))
    return uses


def locate(directory: str, name: str) -> Path | None:
    """A model file by name in its folders; the embedded default checkpoint is built if it is the one asked."""
    from . import models

    found = paths.find_model(directory, name)
    if found is None and directory == "checkpoints" and name == models.DEFAULT_CHECKPOINT:
        found = models.ensure_default_checkpoint()
    return found


def manifest(prompt: dict[str, Any], known: list[dict[str, Any]] | None = None,
             hashes: HashIndex | None = None) -> list[dict[str, Any]]:
    """ComfyUI's `models` list for the files a prompt uses; a `url` from an earlier manifest is kept."""
    hashes = hashes or index()
    urls = {(m.get("directory"), m.get("name")): m.get("url") for m in known or [] if isinstance(m, dict)}
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for use in model_uses(prompt):
        if (use.directory, use.name) in seen:
            continue
        seen.add((use.directory, use.name))
        entry: dict[str, Any] = {"name": use.name, "directory": use.directory}
        path = locate(use.directory, use.name)
        if path is not None:
            entry.update(hash=hashes.sha256(path), hash_type="sha256")
        if urls.get((use.directory, use.name)):
            entry["url"] = urls[(use.directory, use.name)]
        out.append(entry)
    return out


@dataclass
class Resolution:
    """What opening a workflow's manifest found: renamed files (already substituted) and missing ones."""

    renamed: list[dict[str, Any]] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)  # found by name, but another hash
    missing: list[dict[str, Any]] = field(default_factory=list)


def _candidates(directory: str) -> list[tuple[str, Path]]:
    out = []
    for folder in paths.model_dirs(directory):
        for rel in paths.list_models_in(folder):
            out.append((rel, folder / rel))
    return out


def resolve(prompt: dict[str, Any], models: list[dict[str, Any]] | None,
            hashes: HashIndex | None = None) -> Resolution:
    """Find each manifest entry the prompt uses, by hash first; renamed files are substituted in `prompt`.

    A file whose name matches is checked against the index (hashing it once if it never was); only when that
    fails are the other files of the folder hashed, each once for all later opens."""
    hashes = hashes or index()
    result = Resolution()
    wanted = {(m.get("directory"), m.get("name")): m for m in models or [] if isinstance(m, dict)}
    for use in model_uses(prompt):
        entry = wanted.get((use.directory, use.name))
        expected = (entry or {}).get("hash")
        if entry is None or not expected or (entry.get("hash_type") or "sha256").lower() != "sha256":
            continue  # nothing recorded to check against: validation reports a file that is absent
        expected = str(expected).lower()
        by_name = paths.find_model(use.directory, use.name)
        if by_name is not None and hashes.sha256(by_name) == expected:
            continue
        found = next((rel for rel, path in _candidates(use.directory) if hashes.sha256(path) == expected), None)
        if found is None and by_name is None:
            by_name = locate(use.directory, use.name)  # the embedded default is built when it is the one named
            if by_name is not None and hashes.sha256(by_name) == expected:
                continue
        if found is not None:
            prompt[use.node_id]["inputs"][use.input_name] = found
            result.renamed.append({"node_id": use.node_id, "name": use.name, "found": found,
                                   "directory": use.directory, "hash": expected})
        elif by_name is not None:
            result.mismatched.append({"node_id": use.node_id, "name": use.name, "directory": use.directory,
                                      "expected_hash": expected, "hash": hashes.sha256(by_name)})
        else:
            result.missing.append({"node_id": use.node_id, "class_type": use.class_type,
                                   "input_name": use.input_name, "name": use.name, "directory": use.directory,
                                   "expected_hash": expected, "url": entry.get("url"),
                                   "searched": [str(p) for p in paths.model_dirs(use.directory)]})
    return result


def fill_index(progress: Callable[[str, int, int], None] | None = None,
               hashes: HashIndex | None = None) -> dict[str, int]:
    """Hash every model file in every folder not yet indexed; `progress(name, done_bytes, total_bytes)`."""
    hashes = hashes or index()
    files: dict[str, Path] = {}
    for directory in paths.FOLDERS.models:
        for _rel, path in _candidates(directory):
            try:
                files.setdefault(str(path.resolve()), path)
            except OSError:
                continue
    todo = [p for p in files.values() if hashes.known(p) is None]
    total = sum(p.stat().st_size for p in todo)
    done = 0
    for path in todo:
        def step(n: int, path: Path = path) -> None:
            nonlocal done
            done += n
            if progress:
                progress(path.name, done, total)
        hashes.sha256(path, step)
    return {"files": len(files), "hashed": len(todo), "bytes": total}
