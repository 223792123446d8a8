"""CLIP text encoding as ComfyUI's CLIPTextEncode does it, on a transformers `CLIPTextModel`.

A prompt becomes chunks of 77 tokens (see `prompt.py`), all encoded in one batch; their outputs
are concatenated on the token axis. Weighted tokens are interpolated against the empty prompt's
encoding, z_empty + (z - z_empty) * w, rather than scaled. `layer` is ComfyUI's
stop_at_clip_layer: -1 is the last layer; -2 the penultimate hidden state passed through the final
layer norm ("clip skip 2"). The pooled output always comes from the last layer.
"""
from __future__ import annotations

import torch
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase

from nodes.diffusion.prompt import TokenWeights, tokenize_with_weights


def clip_l_config() -> CLIPTextConfig:
    """The SD1.x text encoder: OpenAI CLIP ViT-L/14's text tower (123 M parameters)."""
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        projection_dim=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=49407,
    )


class ClipTextEncoder:
    """A CLIP text model, its tokenizer and the layer whose output is the conditioning."""

    def __init__(self, model: CLIPTextModel, tokenizer: PreTrainedTokenizerBase, layer: int = -1) -> None:
        if layer >= 0:
            raise ValueError(f"layer counts from the end and must be negative (-1 = last), got {layer}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.layer = layer

    def with_layer(self, layer: int) -> ClipTextEncoder:
        """The same weights and tokenizer, stopping at another layer (CLIPSetLastLayer)."""
        return ClipTextEncoder(self.model, self.tokenizer, layer)

    @property
    def _uses_last_layer(self) -> bool:
        # ComfyUI falls back to the last layer when the index reaches past the first layer.
        return self.layer == -1 or -self.layer > self.model.config.num_hidden_layers

    def _forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=ids, output_hidden_states=not self._uses_last_layer)
        last = out.last_hidden_state
        if self._uses_last_layer:
            z = last
        else:
            z = self.model.final_layer_norm(out.hidden_states[self.layer])
        # Pooled at the first end token of each row, from the last layer whatever `layer` is.
        first_end = (ids == self.tokenizer.eos_token_id).int().argmax(dim=-1)
        pooled = last[torch.arange(ids.shape[0], device=ids.device), first_end]
        return z.float(), pooled.float()

    @torch.no_grad()
    def encode_token_weights(self, chunks: list[TokenWeights]) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond [1, 77·k, D], pooled [1, D]) float32 for k chunks of (token id, weight) pairs."""
        rows = [[t for t, _ in chunk] for chunk in chunks]
        weights = [[w for _, w in chunk] for chunk in chunks]
        weighted = any(w != 1.0 for row in weights for w in row)
        if weighted:
            rows.append(self._empty_row(len(rows[0])))
        device = self.model.device
        z, pooled = self._forward(torch.tensor(rows, dtype=torch.long, device=device))
        cond = z[: len(chunks)]
        if weighted:
            w = torch.tensor(weights, dtype=torch.float32, device=device).unsqueeze(-1)
            empty = z[-1:]
            # Tokens of weight 1 are left untouched, so their values are bit-identical to ComfyUI's.
            cond = torch.where(w != 1.0, (cond - empty) * w + empty, cond)
        return cond.reshape(1, -1, cond.shape[-1]), pooled[:1]

    def _empty_row(self, length: int) -> list[int]:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return [tok.bos_token_id, tok.eos_token_id] + [pad] * (length - 2)

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIPTextEncode: (cond [1, 77·k, D], pooled [1, D]), float32 on the model's device."""
        return self.encode_token_weights(tokenize_with_weights(self.tokenizer, text))
