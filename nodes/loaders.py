"""Model loaders."""
from __future__ import annotations

from typing import Any, ClassVar

from executor.schema import Input, Node, Output

from . import models, paths


def checkpoint_names() -> list[str]:
    # The embedded default is always offered: it is built on first use.
    return sorted({*paths.list_models("checkpoints"), models.DEFAULT_CHECKPOINT})


class CheckpointLoaderSimple(Node):
    type = "CheckpointLoaderSimple"
    display_name = "Load Checkpoint"
    category = "loaders"
    description = "Loads an SD1.x single-file checkpoint (.safetensors; .ckpt/.pt only as plain tensors)."
    cache_pool = "models"
    # This input names a model file in the `checkpoints` folders (read by nodes.manifest).
    model_files: ClassVar[dict[str, str]] = {"ckpt_name": "checkpoints"}
    inputs = (Input("ckpt_name", "COMBO", options=checkpoint_names, tooltip="The checkpoint file to load.",
                    missing_hint=paths.missing_model_hint("checkpoints")),)
    outputs = (Output("MODEL", tooltip="The denoising model."), Output("CLIP", tooltip="The text encoder."),
               Output("VAE", tooltip="The image autoencoder."))

    def run(self, ctx: Any, ckpt_name: str) -> tuple[Any, ...]:
        path = paths.find_model("checkpoints", ckpt_name)
        if path is None and ckpt_name == models.DEFAULT_CHECKPOINT:
            path = models.ensure_default_checkpoint()
        if path is None:
            raise FileNotFoundError(paths.missing_model_hint("checkpoints")(ckpt_name))
        return models.load(path)


NODES = (CheckpointLoaderSimple,)
