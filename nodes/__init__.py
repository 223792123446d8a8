"""Sumi's node families. Each module exports `NODES`; one that fails to import is reported and skipped."""
from __future__ import annotations

from executor.schema import Registry

NODE_MODULES = ("nodes.loaders", "nodes.conditioning", "nodes.sampling", "nodes.latent", "nodes.image",
                "nodes.latent_tools", "nodes.image_tools", "nodes.mask", "nodes.primitives",
                "nodes.model_patches", "nodes.custom_sampling", "nodes.inpaint", "nodes.upscale")


def build_registry() -> Registry:
    """Every node module's nodes, then the components (shipped and the user's) as `component/NAME` types."""
    from . import components

    registry = Registry()
    registry.load_modules(NODE_MODULES)
    components.load_into(registry)
    return registry
