"""Sumi's node families. Each module exports `NODES`; one that fails to import is reported and skipped."""
from __future__ import annotations

from executor.schema import Registry

NODE_MODULES = ("nodes.loaders", "nodes.conditioning", "nodes.sampling", "nodes.latent", "nodes.image",
                "nodes.model_patches", "nodes.custom_sampling", "nodes.inpaint")


def build_registry() -> Registry:
    registry = Registry()
    registry.load_modules(NODE_MODULES)
    return registry
