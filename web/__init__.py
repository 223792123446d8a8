"""Sumi's HTTP and websocket server: ComfyUI's API over a durable queue."""
from __future__ import annotations

from .server import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
