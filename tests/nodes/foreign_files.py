"""Tiny files of kinds Sumi refuses or reads from other tools' layouts, made by the libraries that define them
(transformers' T5, UMT5, Qwen2 and CLIP vision models), so detection is tested on names no one here wrote."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # tied weights (T5's shared / embed_tokens) are separate tensors in a file
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def t5() -> dict[str, torch.Tensor]:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return _state(T5EncoderModel(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)))


def umt5() -> dict[str, torch.Tensor]:
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    return _state(UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                                              num_heads=4)))


def qwen() -> dict[str, torch.Tensor]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return _state(Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32,
                                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)))


def clip_vision() -> dict[str, torch.Tensor]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    return _state(CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32,
                                                                 num_hidden_layers=1, num_attention_heads=2,
                                                                 image_size=32, patch_size=16,
                                                                 projection_dim=16)))


BUILDERS: dict[str, Callable[[], dict[str, torch.Tensor]]] = {"t5": t5, "umt5": umt5, "qwen": qwen,
                                                               "clip_vision": clip_vision}


def write(kind: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(BUILDERS[kind](), str(path))
    return path
