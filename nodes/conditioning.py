"""Prompt encoding."""
from __future__ import annotations

from typing import Any

from executor.schema import Input, Node, Output


class CLIPTextEncode(Node):
    type = "CLIPTextEncode"
    display_name = "CLIP Text Encode (Prompt)"
    category = "conditioning"
    description = "Encodes a prompt with (word:1.2) weighting into conditioning for the sampler."
    inputs = (Input("text", "STRING", multiline=True, extra={"dynamicPrompts": True},
                    tooltip="The text to be encoded."),
              Input("clip", "CLIP", tooltip="The CLIP model used for encoding the text."))
    outputs = (Output("CONDITIONING", tooltip="The encoded text, to guide the diffusion model."),)

    def run(self, ctx: Any, text: str, clip: Any) -> tuple[Any, ...]:
        cond, pooled = clip.encode(text)
        return ([[cond, {"pooled_output": pooled}]],)


class CLIPSetLastLayer(Node):
    type = "CLIPSetLastLayer"
    display_name = "CLIP Set Last Layer"
    category = "conditioning"
    inputs = (Input("clip", "CLIP"), Input("stop_at_clip_layer", "INT", default=-1, min=-24, max=-1, step=1))
    outputs = (Output("CLIP"),)

    def run(self, ctx: Any, clip: Any, stop_at_clip_layer: int) -> tuple[Any, ...]:
        return (clip.with_layer(stop_at_clip_layer),)


NODES = (CLIPTextEncode, CLIPSetLastLayer)
