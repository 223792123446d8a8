"""Test-wide setup: one torch CPU thread, so results and run times do not depend on the machine's core count;
and the tiny default checkpoint, built once per session."""
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
