"""Test-wide setup: one torch CPU thread, so results and run times do not depend on the machine's core count;
the tiny default checkpoint, built once per session; a fresh base directory per test module."""
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded tiny default checkpoint, built once per session into a session temp dir."""
    from nodes import models, paths

    saved = paths.FOLDERS
    try:
        paths.configure(tmp_path_factory.mktemp("tiny_checkpoint"))
        return models.ensure_default_checkpoint()
    finally:
        paths.FOLDERS = saved


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh base directory for one test module (tiny models get built into it on first use); Sumi's
    process-wide folders point at it and are restored after. Modules that need more define their own `base`."""
    from nodes import paths

    saved = paths.FOLDERS
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    paths.configure(root)
    try:
        yield root
    finally:
        paths.FOLDERS = saved


@pytest.fixture
def tiny_base(tmp_path: Path, tiny_checkpoint: Path) -> Iterator[Path]:
    """A fresh base directory per test holding (a link to) the tiny default checkpoint and an input folder;
    the process folders point at it and are restored after."""
    from nodes import models, paths

    saved = paths.FOLDERS
    paths.configure(tmp_path)
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / models.DEFAULT_CHECKPOINT).symlink_to(tiny_checkpoint)
    (tmp_path / "input").mkdir()
    try:
        yield tmp_path
    finally:
        paths.FOLDERS = saved
