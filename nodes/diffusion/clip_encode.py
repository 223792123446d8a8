"""Text encoding as ComfyUI's CLIPTextEncode does it, on transformers CLIP text models.

A prompt becomes chunks of 77 tokens (see `prompt.py`), all encoded in one batch; their outputs
are concatenated on the token axis. Weighted tokens are interpolated against the empty prompt's
encoding, z_empty + (z - z_empty) * w, rather than scaled. `layer` is ComfyUI's stop_at_clip_layer:
-1 the last layer, -2 the penultimate one; whether a hidden state passes through the final layer norm is
the encoder's own rule (SD1.x and SD2.x: yes; SDXL: no). The pooled output always comes from the last
layer, through the text projection where the model has one (OpenCLIP towers).

Families (ComfyUI's facts): SD1.x CLIP-L, last layer, pads with the end token; SD2.x OpenCLIP-H, penultimate
layer with the final norm, pads with 0; SDXL CLIP-L (penultimate, no norm, pads with the end token) and
OpenCLIP-bigG (penultimate, no norm, pads with 0), concatenated on the channel axis, pooled from bigG;
the refiner bigG alone.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from transformers import CLIPTextConfig, PreTrainedTokenizerBase

from nodes.diffusion.patches import WeightPatch, patched
from nodes.diffusion.prompt import EmbeddingLookup, TokenWeights, tokenize_with_weights


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


@dataclass(frozen=True)
class EncoderRules:
    """What differs between text encoders of the same architecture (ComfyUI's per-family settings)."""

    default_layer: int = -1  # the layer used without CLIPSetLastLayer
    layer_norm_hidden: bool = True  # whether a hidden state other than the last goes through the final norm
    pad_id: int | None = None  # None: pad with the end token


RULES = {  # (family, encoder) -> rules
    ("sd15", "clip_l"): EncoderRules(),
    ("sd2", "clip_h"): EncoderRules(default_layer=-2, pad_id=0),
    ("sdxl", "clip_l"): EncoderRules(default_layer=-2, layer_norm_hidden=False),
    ("sdxl", "clip_g"): EncoderRules(default_layer=-2, layer_norm_hidden=False, pad_id=0),
    ("sdxl_refiner", "clip_g"): EncoderRules(default_layer=-2, layer_norm_hidden=False, pad_id=0),
}


class ClipTextEncoder:
    """One CLIP text model, its tokenizer, its rules and the layer whose output is the conditioning."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, layer: int | None = None,
                 rules: EncoderRules = EncoderRules(), patches: tuple[WeightPatch, ...] = (),
                 embeddings: EmbeddingLookup | None = None) -> None:
        if layer is not None and layer >= 0:
            raise ValueError(f"layer counts from the end and must be negative (-1 = last), got {layer}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.rules = rules
        self.layer = rules.default_layer if layer is None else layer
        self.patches = patches  # applied to the shared weights only while encoding (LoRA)
        self.embeddings = embeddings  # textual inversion: name -> vectors [n, D] for this encoder, or None

    def with_layer(self, layer: int) -> ClipTextEncoder:
        """The same weights and tokenizer, stopping at another layer (CLIPSetLastLayer)."""
        return ClipTextEncoder(self.model, self.tokenizer, layer, self.rules, self.patches, self.embeddings)

    def with_patches(self, patches: tuple[WeightPatch, ...]) -> ClipTextEncoder:
        return ClipTextEncoder(self.model, self.tokenizer, self.layer, self.rules, self.patches + patches,
                               self.embeddings)

    @property
    def _tower(self) -> torch.nn.Module:
        return getattr(self.model, "text_model", self.model)  # CLIPTextModelWithProjection wraps the tower

    @property
    def _uses_last_layer(self) -> bool:
        # ComfyUI falls back to the last layer when the index reaches past the first layer.
        return (self.layer == -1 and self.rules.layer_norm_hidden) or -self.layer > self.model.config.num_hidden_layers

    def _forward(self, ids: torch.Tensor, vectors: dict[tuple[int, int], torch.Tensor] | None = None) \
            -> tuple[torch.Tensor, torch.Tensor]:
        tower = self._tower
        hook = None
        if vectors:  # embedding vectors replace the token embeddings of their slots (positions are added after)
            def put(module: torch.nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
                out = out.clone()
                for (row, col), v in vectors.items():
                    out[row, col] = v.to(device=out.device, dtype=out.dtype)
                return out

            hook = tower.embeddings.token_embedding.register_forward_hook(put)
        try:
            out = tower(input_ids=ids, output_hidden_states=not self._uses_last_layer)
        finally:
            if hook is not None:
                hook.remove()
        last = out.last_hidden_state
        if self._uses_last_layer:
            z = last
        else:
            z = out.hidden_states[self.layer]
            if self.rules.layer_norm_hidden:
                z = tower.final_layer_norm(z)
        # Pooled at the first end token of each row, from the last layer whatever `layer` is.
        first_end = (ids == self.tokenizer.eos_token_id).int().argmax(dim=-1)
        pooled = last[torch.arange(ids.shape[0], device=ids.device), first_end]
        projection = getattr(self.model, "text_projection", None)
        if projection is not None:
            pooled = projection(pooled)
        return z.float(), pooled.float()

    def tokenize(self, text: str) -> list[TokenWeights]:
        return tokenize_with_weights(self.tokenizer, text, pad=self.rules.pad_id, embeddings=self.embeddings)

    @torch.no_grad()
    def encode_token_weights(self, chunks: list[TokenWeights]) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond [1, 77·k, D], pooled [1, P]) float32 for k chunks of (token id, weight) pairs."""
        # embedding vectors sit in their slots as tensors: id 0 there, the vector put in by `_forward`
        vectors = {(r, c): t for r, chunk in enumerate(chunks) for c, (t, _) in enumerate(chunk)
                   if isinstance(t, torch.Tensor)}
        rows = [[0 if isinstance(t, torch.Tensor) else t for t, _ in chunk] for chunk in chunks]
        weights = [[w for _, w in chunk] for chunk in chunks]
        weighted = any(w != 1.0 for row in weights for w in row)
        if weighted:
            rows.append(self._empty_row(len(rows[0])))
        device = self.model.device
        with patched(self.model, self.patches):
            z, pooled = self._forward(torch.tensor(rows, dtype=torch.long, device=device), vectors)
        cond = z[: len(chunks)]
        if weighted:
            w = torch.tensor(weights, dtype=torch.float32, device=device).unsqueeze(-1)
            empty = z[-1:]
            # Tokens of weight 1 are left untouched, so their values are bit-identical to ComfyUI's.
            cond = torch.where(w != 1.0, (cond - empty) * w + empty, cond)
        return cond.reshape(1, -1, cond.shape[-1]), pooled[:1]

    def _empty_row(self, length: int) -> list[int]:
        tok = self.tokenizer
        pad = self.rules.pad_id if self.rules.pad_id is not None else tok.eos_token_id
        return [tok.bos_token_id, tok.eos_token_id] + [pad] * (length - 2)

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIPTextEncode: (cond [1, 77·k, D], pooled [1, P]), float32 on the model's device."""
        return self.encode_token_weights(self.tokenize(text))


@dataclass(frozen=True)
class TextEncoders:
    """CLIP: a family's text encoders (clip_l, clip_h, clip_g) in concatenation order."""

    family: str
    encoders: Mapping[str, ClipTextEncoder]

    def with_layer(self, layer: int) -> TextEncoders:
        return replace(self, encoders={n: e.with_layer(layer) for n, e in self.encoders.items()})

    def with_patches(self, patches: Mapping[str, tuple[WeightPatch, ...]]) -> TextEncoders:
        """A view whose encoders add `patches` (per encoder name) to the shared weights while encoding."""
        return replace(self, encoders={n: e.with_patches(tuple(patches.get(n, ()))) for n, e in self.encoders.items()})

    def tokenize(self, text: str) -> dict[str, list[TokenWeights]]:
        return {name: enc.tokenize(text) for name, enc in self.encoders.items()}

    def encode_tokens(self, tokens: Mapping[str, list[TokenWeights]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, pooled): the encoders' outputs concatenated on the channel axis (cut to the shortest token
        length), pooled from the last encoder (bigG for SDXL)."""
        outs = [enc.encode_token_weights(tokens[name]) for name, enc in self.encoders.items()]
        length = min(c.shape[1] for c, _ in outs)
        cond = torch.cat([c[:, :length] for c, _ in outs], dim=-1) if len(outs) > 1 else outs[0][0]
        return cond, outs[-1][1]

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_tokens(self.tokenize(text))

    def encode_pair(self, text_g: str, text_l: str) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIPTextEncodeSDXL: bigG reads `text_g`, CLIP-L `text_l`; the shorter one is padded with empty
        chunks to the other's chunk count."""
        tokens = self.tokenize(text_g)
        if "clip_l" in self.encoders:
            tokens["clip_l"] = self.encoders["clip_l"].tokenize(text_l)
            empty = self.tokenize("")
            for name in ("clip_l", "clip_g"):
                other = "clip_g" if name == "clip_l" else "clip_l"
                while len(tokens[name]) < len(tokens[other]):
                    tokens[name] = tokens[name] + empty[name]
        return self.encode_tokens(tokens)
