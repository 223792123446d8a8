"""Where files live: ComfyUI's folder layout, `extra_model_paths.yaml`, and one safe path resolver.

Model folders are keyed as in ComfyUI (`checkpoints`, `loras`, `vae`, `controlnet`,
`upscale_models`, `embeddings`, …). Every user-supplied relative path goes through
`resolve_within`, which refuses anything that would leave its root.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MODEL_FOLDERS = ("checkpoints", "loras", "vae", "text_encoders", "diffusion_models", "embeddings", "controlnet",
                 "upscale_models", "vae_approx", "clip_vision", "configs")
# ComfyUI's legacy folder names that point at a canonical key.
ALIASES = {"unet": "diffusion_models", "clip": "text_encoders", "t2i_adapter": "controlnet"}
REPO_ROOT = Path(__file__).resolve().parent.parent


class UnsafePath(ValueError):
    """A user-supplied path that would leave its root (.., absolute, NUL, escaping symlink)."""


@dataclass
class Folders:
    base: Path
    output: Path
    input: Path
    temp: Path
    user: Path
    models: dict[str, list[Path]] = field(default_factory=dict)


def _default_folders(base: Path) -> Folders:
    models = {key: [base / "models" / key] for key in MODEL_FOLDERS}
    models["diffusion_models"].append(base / "models" / "unet")
    models["text_encoders"].append(base / "models" / "clip")
    models["controlnet"].append(base / "models" / "t2i_adapter")
    return Folders(base, base / "output", base / "input", base / "temp", base / "user", models)


FOLDERS = _default_folders(Path(os.environ.get("SUMI_BASE_DIR", REPO_ROOT)))


def configure(base_dir: str | os.PathLike | None = None, *, output_dir: str | os.PathLike | None = None,
              input_dir: str | os.PathLike | None = None, temp_dir: str | os.PathLike | None = None,
              extra_model_paths: list[str | os.PathLike] = ()) -> Folders:
    """Set the process-wide folders; `extra_model_paths.yaml` beside the base dir is always read."""
    global FOLDERS
    base = Path(base_dir).resolve() if base_dir else FOLDERS.base
    folders = _default_folders(base)
    if output_dir:
        folders.output = Path(output_dir).resolve()
    if input_dir:
        folders.input = Path(input_dir).resolve()
    if temp_dir:
        folders.temp = Path(temp_dir).resolve()
    configs = [base / "extra_model_paths.yaml", *map(Path, extra_model_paths)]
    for config in configs:
        if config.is_file():
            for key, paths in read_extra_model_paths(config).items():
                folders.models.setdefault(key, []).extend(paths)
    FOLDERS = folders
    return folders


def read_extra_model_paths(config: Path) -> dict[str, list[Path]]:
    """ComfyUI's extra_model_paths.yaml: named sections of `folder_key: path(s)`, optional base_path."""
    import yaml

    data = yaml.safe_load(config.read_text()) or {}
    found: dict[str, list[Path]] = {}
    for section in data.values():
        if not isinstance(section, dict):
            continue
        base = section.get("base_path")
        root = Path(os.path.expandvars(os.path.expanduser(base))) if base else config.parent
        if not root.is_absolute():
            root = config.parent / root
        for key, value in section.items():
            if key in ("base_path", "is_default") or not isinstance(value, str):
                continue
            key = ALIASES.get(key, key)
            for line in value.splitlines():
                line = line.strip()
                if line:
                    path = Path(os.path.expandvars(os.path.expanduser(line)))
                    found.setdefault(key, []).append(path if path.is_absolute() else root / path)
    return found


def resolve_within(root: Path, relative: str, *, trust_symlinks: bool = False) -> Path:
    """`root/relative`, refusing anything that escapes root once symlinks are resolved.

    `trust_symlinks` is for model folders, where users link files kept elsewhere on purpose; the name
    itself still may not climb out with `..` or be absolute.
    """
    if not isinstance(relative, str) or "\x00" in relative:
        raise UnsafePath(f"refused path {relative!r}: not a plain string")
    if relative.startswith(("/", "\\")) or os.path.isabs(relative) or (len(relative) > 1 and relative[1] == ":"):
        raise UnsafePath(f"refused path {relative!r}: absolute paths are not allowed")
    if ".." in Path(relative.replace("\\", "/")).parts:
        raise UnsafePath(f"refused path {relative!r}: '..' is not allowed")
    if trust_symlinks:
        return root / relative
    root = root.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise UnsafePath(f"refused path {relative!r}: it leaves {root}")
    return target


def model_dirs(kind: str) -> list[Path]:
    return FOLDERS.models.get(ALIASES.get(kind, kind), [])


def _scan(folder: Path, extensions: tuple[str, ...]) -> tuple[list[str], dict[str, float]]:
    """(relative names of matching files, {directory walked: its mtime}) for one folder tree."""
    names, mtimes = [], {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        try:
            mtimes[dirpath] = os.stat(dirpath).st_mtime
        except OSError:
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(extensions):
                names.append(os.path.relpath(os.path.join(dirpath, name), folder).replace(os.sep, "/"))
    return names, mtimes


# (folder, extensions) → (names, {dir: mtime}, scan time); re-walked only when one of its directories changed.
_LISTINGS: dict[tuple[str, tuple[str, ...]], tuple[list[str], dict[str, float], float]] = {}
_LISTINGS_LOCK = threading.Lock()


RACY_SECONDS = 2.0  # a directory changed this close to its scan may change again within one mtime tick


def _still_valid(mtimes: dict[str, float], scanned_at: float) -> bool:
    """Adding, removing or renaming a file changes its directory's mtime, so unchanged mtimes mean the same
    listing (the check costs one stat per directory, not one per file). A directory modified just before
    the scan is never trusted (git's "racy" rule): a second change in the same tick would not show."""
    try:
        return all(os.stat(d).st_mtime == m and m < scanned_at - RACY_SECONDS for d, m in mtimes.items())
    except OSError:
        return False


def _listing(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    key = (str(folder), extensions)
    with _LISTINGS_LOCK:
        cached = _LISTINGS.get(key)
    if cached is not None and _still_valid(cached[1], cached[2]):
        return cached[0]
    scanned_at = time.time()
    names, mtimes = _scan(folder, extensions)
    with _LISTINGS_LOCK:
        _LISTINGS[key] = (names, mtimes, scanned_at)
    return names


def list_models(kind: str, extensions: tuple[str, ...] = MODEL_EXTENSIONS) -> list[str]:
    """Relative names (subfolders with '/') of the model files of one kind, sorted, first folder wins.

    Each folder's listing is cached and re-read only when a directory in it changed (as ComfyUI does), so
    /object_info, read on every front-end start, does not walk thousands of files each time."""
    names: dict[str, None] = {}
    for folder in model_dirs(kind):
        if not folder.is_dir():
            continue
        for rel in _listing(folder, extensions):
            names.setdefault(rel, None)
    return sorted(names)


def list_models_in(folder: Path, extensions: tuple[str, ...] = MODEL_EXTENSIONS) -> list[str]:
    """Relative names (subfolders with '/') of the model files in one folder, sorted (cached as list_models is)."""
    return sorted(_listing(folder, extensions)) if folder.is_dir() else []


def model_files(kind: str, extensions: tuple[str, ...] = MODEL_EXTENSIONS) -> list[tuple[int, str]]:
    """(index of the folder in model_dirs(kind), relative name) of every model file, folder by folder."""
    found = []
    for index, folder in enumerate(model_dirs(kind)):
        if folder.is_dir():
            found += [(index, rel) for rel in _listing(folder, extensions)]
    return found


def find_model(kind: str, name: str) -> Path | None:
    for folder in model_dirs(kind):
        try:
            path = resolve_within(folder, name, trust_symlinks=True)
        except UnsafePath:
            return None
        if path.is_file():
            return path
    return None


def build_once(kind: str, name: str, write: Callable[[Path], object]) -> Path:
    """The model file `name` of `kind`; when no folder of that kind has it, `write(tmp)` makes it in the first one.

    The file is written under a temporary name no listing shows (its own extension, the process and thread in
    it) and renamed into place, so a concurrent reader never sees half a file and two writers never share one.
    """
    existing = find_model(kind, name)
    if existing:
        return existing
    target = model_dirs(kind)[0] / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def missing_model_hint(kind: str):
    def hint(name: object) -> str:
        searched = ", ".join(str(p) for p in model_dirs(kind)) or "(no folders configured)"
        return f"model file {name!r} was not found; searched {kind} folders: {searched}"
    return hint


def list_input_files(extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[str]:
    root = FOLDERS.input
    if not root.is_dir():
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(extensions):
                out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(out)


def ensure_example_inputs() -> None:
    """Copy the shipped example inputs (used by workflows/img2img.json) into the input folder if missing."""
    import shutil

    for src in sorted((REPO_ROOT / "workflows" / "inputs").glob("*")):
        dest = FOLDERS.input / src.name
        if not dest.exists():
            FOLDERS.input.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
