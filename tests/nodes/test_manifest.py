"""Model manifests and the hash index: hashing matches hashlib at any size, the index answers unchanged files
without reading them and re-hashes changed ones, a moved file keeps its hash, a manifest lists every model a
prompt uses, and resolving finds a renamed file by its hash and reports a missing one with what was searched."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from nodes import manifest, paths


@pytest.fixture
def base(tmp_path: Path) -> Path:
    saved = paths.FOLDERS
    paths.configure(tmp_path)
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    yield tmp_path
    paths.FOLDERS = saved


def write(path: Path, size: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes((i * 31 + seed) % 251 for i in range(size)))
    return path


@pytest.mark.parametrize("size", [0, 1, manifest.BLOCK - 1, manifest.BLOCK, 2 * manifest.BLOCK + 12345])
def test_hash_file_is_sha256_at_any_size(tmp_path: Path, size: int) -> None:
    file = write(tmp_path / "f.bin", size)
    seen: list[int] = []
    assert manifest.hash_file(file, seen.append) == hashlib.sha256(file.read_bytes()).hexdigest()
    assert sum(seen) == size


def test_index_hashes_once_rehashes_a_changed_file_and_follows_a_move(base: Path) -> None:
    file = write(base / "models" / "checkpoints" / "a.safetensors", 1000)
    index = manifest.HashIndex(base / "user" / "h.db")
    first = index.sha256(file)
    assert index.sha256(file) == first and index.computed == 1
    assert manifest.HashIndex(base / "user" / "h.db").known(file) == first  # persistent across processes
    write(file, 1000, seed=1)
    os.utime(file, ns=(1, 1))
    assert index.sha256(file) != first and index.computed == 2
    moved = file.with_name("b.safetensors")
    file.rename(moved)
    assert index.sha256(moved) == hashlib.sha256(moved.read_bytes()).hexdigest() and index.computed == 2


def prompt(name: str) -> dict:
    return {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "x"}}}


def test_manifest_lists_models_with_hash_and_keeps_a_known_url(base: Path) -> None:
    file = write(base / "models" / "checkpoints" / "sub" / "m.safetensors", 5000)
    index = manifest.HashIndex(base / "user" / "h.db")
    known = [{"name": "sub/m.safetensors", "directory": "checkpoints", "url": "https://example.org/m"}]
    assert manifest.manifest(prompt("sub/m.safetensors"), known, index) == [{
        "name": "sub/m.safetensors", "directory": "checkpoints", "hash_type": "sha256", "url": "https://example.org/m",
        "hash": hashlib.sha256(file.read_bytes()).hexdigest()}]


def test_resolve_finds_a_renamed_file_by_hash_and_reports_a_missing_one(base: Path) -> None:
    folder = base / "models" / "checkpoints"
    file = write(folder / "m.safetensors", 5000)
    write(folder / "decoy.safetensors", 5000, seed=3)
    index = manifest.HashIndex(base / "user" / "h.db")
    models = manifest.manifest(prompt("m.safetensors"), None, index)
    shutil.move(file, folder / "z_renamed.safetensors")
    p = prompt("m.safetensors")
    found = manifest.resolve(p, models, index)
    assert found.missing == [] and p["4"]["inputs"]["ckpt_name"] == "z_renamed.safetensors"
    assert found.renamed == [{"node_id": "4", "name": "m.safetensors", "found": "z_renamed.safetensors",
                              "directory": "checkpoints", "hash": models[0]["hash"]}]
    computed = index.computed
    manifest.resolve(prompt("m.safetensors"), models, index)
    assert index.computed == computed  # a second open reads no file
    (folder / "z_renamed.safetensors").unlink()
    found = manifest.resolve(prompt("m.safetensors"), [{**models[0], "url": "https://example.org/m"}], index)
    assert found.missing == [{"node_id": "4", "class_type": "CheckpointLoaderSimple", "input_name": "ckpt_name",
                              "name": "m.safetensors", "directory": "checkpoints", "expected_hash": models[0]["hash"],
                              "url": "https://example.org/m", "searched": [str(folder)]}]


def test_fill_index_hashes_each_file_once(base: Path) -> None:
    for i in range(3):
        write(base / "models" / "checkpoints" / f"{i}.safetensors", 3000 + i)
    write(base / "models" / "loras" / "l.safetensors", 10)
    index = manifest.HashIndex(base / "user" / "h.db")
    reports: list[tuple[str, int, int]] = []
    assert manifest.fill_index(lambda *r: reports.append(r), index) == {"files": 4, "hashed": 4, "bytes": 9013}
    assert reports[-1][1:] == (9013, 9013)
    assert manifest.fill_index(None, index) == {"files": 4, "hashed": 0, "bytes": 0}
