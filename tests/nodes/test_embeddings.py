"""Textual inversion: `embedding:name` puts the file's vectors into token slots, exactly as if they were the
token embeddings of real words (so an embedding made of the rows of "red apple" encodes exactly as the words do),
in every file format (safetensors `emb_params`, A1111 `.pt` `string_to_param`, SDXL `clip_l`/`clip_g` keys);
trailing commas stay text; a missing or wrong-width embedding is read as text / ignored, never a crash."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nodes import models, paths
from nodes.diffusion.clip_encode import ClipTextEncoder


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    saved = paths.FOLDERS
    root = tmp_path_factory.mktemp("embeddings")
    paths.configure(root)
    (root / "models" / "embeddings" / "sub").mkdir(parents=True)
    yield root
    paths.FOLDERS = saved


def _rows(encoder: object, text: str) -> torch.Tensor:
    """The token embeddings of `text`'s ids (no start/end)."""
    ids = encoder.tokenizer(text, add_special_tokens=False)["input_ids"]
    return encoder._tower.embeddings.token_embedding.weight[ids].detach().clone()


def test_embedding_vectors_encode_exactly_as_the_words_they_copy(base: Path) -> None:
    _, clip, _ = models.load(models.ensure_default_checkpoint())
    enc = clip.encoders["clip_l"]
    save_file({"emb_params": _rows(enc, "red apple")}, str(base / "models" / "embeddings" / "fruit.safetensors"))
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": _rows(enc, "red apple")}, "name": "x",
                "step": 0}, base / "models" / "embeddings" / "sub" / "classic.pt")
    want = clip.encode("a red apple on a table, (wooden:1.2)")[0]
    for text in ("a embedding:fruit on a table, (wooden:1.2)", "a embedding:fruit.safetensors on a table, "
                 "(wooden:1.2)", "a embedding:sub/classic on a table, (wooden:1.2)"):
        assert torch.equal(clip.encode(text)[0], want), text
    assert torch.equal(clip.encode("embedding:fruit, x")[0], clip.encode("red apple, x")[0])  # comma stays text
    assert not torch.equal(clip.encode("a embedding:fruit")[0], clip.encode("a embedding")[0])


def test_missing_or_wrong_width_embeddings_are_text(base: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, clip, _ = models.load(models.ensure_default_checkpoint())
    save_file({"emb_params": torch.zeros(2, 768)}, str(base / "models" / "embeddings" / "wide.safetensors"))
    enc = clip.encoders["clip_l"]
    literal = ClipTextEncoder(enc.model, enc.tokenizer, rules=enc.rules)  # no embedding lookup: all text
    for name in ("nope", "wide", "../../escape"):
        assert torch.equal(clip.encode(f"a embedding:{name}")[0], literal.encode(f"a embedding:{name}")[0]), name
    assert any("not fit" in r.getMessage() for r in caplog.records)


def test_sdxl_files_give_each_encoder_its_own_vectors(base: Path) -> None:
    _, clip, _ = models.load(models.ensure_default_checkpoint("sumi_tiny_sdxl.safetensors"))
    l_enc, g_enc = clip.encoders["clip_l"], clip.encoders["clip_g"]
    save_file({"clip_l": _rows(l_enc, "red apple"), "clip_g": _rows(g_enc, "red apple")},
              str(base / "models" / "embeddings" / "xl.safetensors"))
    assert torch.equal(clip.encode("a embedding:xl")[0], clip.encode("a red apple")[0])
    tokens = clip.tokenize("a embedding:xl")
    assert all(isinstance(tokens[n][0][2][0], torch.Tensor) for n in ("clip_l", "clip_g"))
