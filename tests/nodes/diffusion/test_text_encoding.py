"""Text encoding matches ComfyUI's CLIPTextEncode, token for token and within 1e-5 numerically.

Proves: (a) the tokenizer derived offline from the CLIP BPE file, with ComfyUI's prompt weighting
and 77-token chunking, reproduces ComfyUI's token ids and per-token weights exactly for the 7
reference prompts (plain, comma, empty, explicit weights, nested emphasis with escaped parentheses,
a two-chunk prompt, clip skip); (b) the vocabulary has 49,408 ids and ids on punctuation, accents
and emoji equal OpenAI's own tokenizer's (pinned); (c) ClipTextEncoder on the reference
checkpoint's text encoder (rebuilt here from the parity README's rule) gives ComfyUI's cond and
pooled outputs within the README's 1e-5, including weighting and layer -2. Also: word packing at
chunk borders, the prompt parser's edge cases, and that the shipped tokenizer files are exactly what OpenAI's
BPE file gives (when the clip-anytorch wheel that carries it is installed).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextModel

from nodes.diffusion.clip_encode import ClipTextEncoder, clip_l_config
from nodes.diffusion.prompt import parse_prompt_weights, tokenize_with_weights
from nodes.diffusion.tokenizer import END_TOKEN, MAX_LENGTH, START_TOKEN, TOKENIZER_DIR, load_clip_tokenizer

REFERENCE = Path(__file__).resolve().parents[2] / "parity" / "reference"
PROMPTS = json.loads((REFERENCE / "conditioning.json").read_text())
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer.text_model."
TOLERANCE = 1e-5  # parity README: conditioning max abs diff; calibration measured about 2e-6


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


def _ids_and_weights(chunks: list[list[tuple[int, float]]]) -> tuple[list[list[int]], list[list[float]]]:
    return [[t for t, _ in c] for c in chunks], [[w for _, w in c] for c in chunks]


# (a) ComfyUI's tokens


@pytest.mark.parametrize("case", PROMPTS, ids=lambda c: f"prompt{c['index']}")
def test_token_ids_and_weights_equal_comfyui(tokenizer, case: dict) -> None:
    ids, weights = _ids_and_weights(tokenize_with_weights(tokenizer, case["prompt"]))
    assert ids == case["token_ids"]
    assert weights == case["token_weights"]


# (b) the vocabulary


def test_vocabulary_size_and_special_ids(tokenizer) -> None:
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 49407)


@pytest.mark.parametrize(
    ("text", "ids"),
    [  # checked against OpenAI's simple_tokenizer on the same BPE file
        ("Hello, World!!!", [3306, 267, 1002, 995]),
        ("café naïve résumé", [15304, 1097, 35689, 563, 29106, 7054, 4166]),
        ("🍎🔥 emoji 😀", [2011, 236, 3016, 16327, 7334]),
        ("(a) [b] \"e\" it's", [263, 320, 264, 314, 321, 316, 257, 324, 257, 585, 568]),
        ("crème brûlée — “quotes” … ½",
         [1075, 12138, 614, 711, 127, 119, 75, 13489, 2005, 728, 506, 5808, 728, 507, 959, 33613]),
    ],
)
def test_ids_are_stable(tokenizer, text: str, ids: list[int]) -> None:
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids


# Chunking and parsing beyond the reference prompts


def test_short_word_moves_whole_to_next_chunk(tokenizer) -> None:
    # Digits are one token each: 74 one-token words leave room for one token, "123" needs three.
    chunks = tokenize_with_weights(tokenizer, "a " * 74 + "123")
    assert len(chunks) == 2 and all(len(c) == 77 for c in chunks)
    ids, _ = _ids_and_weights(chunks)
    assert ids[0][75:] == [49407, 49407]
    assert ids[1][:5] == [49406, 272, 273, 274, 49407]


def test_long_word_is_split_across_chunks(tokenizer) -> None:
    chunks = tokenize_with_weights(tokenizer, "a " * 74 + "(1234567890:1.5)")
    ids, weights = _ids_and_weights(chunks)
    assert ids[0][74:] == [320, 272, 49407]
    assert weights[0][75] == 1.5
    assert ids[1][:11] == [49406, 273, 274, 275, 276, 277, 278, 279, 280, 271, 49407]


def test_exactly_75_tokens_is_one_chunk(tokenizer) -> None:
    assert len(tokenize_with_weights(tokenizer, "a " * 75)) == 1
    assert len(tokenize_with_weights(tokenizer, "a " * 76)) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(a:1.3) (b)", [("a", 1.3), (" ", 1.0), ("b", 1.1)]),
        ("((a:1.5))", [("a", 1.5)]),  # an explicit weight replaces the outer emphasis
        ("(a:1.2:0.5)", [("a:1.2", 0.5)]),  # the number after the last colon
        ("(d:x) (:2)", [("d:x", 1.1), (" ", 1.0), (":2", 1.1)]),  # not a number / leading colon: text
        ("\\(lit\\) [b]", [("(lit) [b]", 1.0)]),
        ("x ( y", [("x ", 1.0), ("( y", 1.0)]),  # unbalanced: kept as text
        ("()", []),
        ("", []),
    ],
)
def test_parse_prompt_weights(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_weights(text) == expected


def test_newlines_separate_words(tokenizer) -> None:
    assert tokenize_with_weights(tokenizer, "red\napple") == tokenize_with_weights(tokenizer, "red apple")


# The shipped tokenizer files

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 48_894  # 49,408 ids - 512 byte tokens - 2 specials
_PACKAGES_WITH_BPE = ("clip", "open_clip")  # both ship the same file next to their sources


def find_bpe_file() -> Path:
    """Locate the BPE file inside an installed package, without importing the package."""
    for package in _PACKAGES_WITH_BPE:
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(folder) / BPE_FILENAME
            if candidate.is_file():
                return candidate
    pytest.skip(f"{BPE_FILENAME} is not installed: runs where `make install` put clip-anytorch (--no-deps); "
                "the shipped tokenizer files were not re-derived")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level BPE alphabet: each byte gets a printable character.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to chr(256 + n) in byte
    order. Insertion order (printable first) is the order of the first 256 vocabulary ids.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def derive_tokenizer_files(bpe_path: Path) -> dict[str, str]:
    """The text of each file transformers' CLIPTokenizer needs, derived from the BPE file."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + NUM_MERGES]]  # line 0 is a header
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{bpe_path} is not the CLIP BPE file: expected {NUM_MERGES} merge pairs after the header")
    alphabet = list(bytes_to_unicode().values())
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(m) for m in merges), START_TOKEN, END_TOKEN]
    vocab = {token: i for i, token in enumerate(tokens)}
    specials = {"bos_token": START_TOKEN, "eos_token": END_TOKEN, "unk_token": END_TOKEN, "pad_token": END_TOKEN}
    # Without model_max_length transformers assumes 1e30 and padding to 77 silently breaks.
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **specials,
    }
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps(specials, indent=2),
    }




def test_shipped_files_are_the_derivation_of_openais_bpe_file() -> None:
    for name, text in derive_tokenizer_files(find_bpe_file()).items():
        assert (TOKENIZER_DIR / name).read_text(encoding="utf-8") == text, name


def test_shipped_files_sizes() -> None:
    assert (TOKENIZER_DIR / "vocab.json").stat().st_size == 961_143
    assert (TOKENIZER_DIR / "merges.txt").stat().st_size == 524_619


# (c) numbers: ComfyUI's CLIPTextEncode outputs


def _reference_tensor(name: str, shape: list[int]) -> torch.Tensor:
    """The parity README's rule for one tensor of reference_sd15.safetensors (fp16, as stored)."""
    if name.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    if len(shape) == 1 and name.endswith(".weight"):  # norm scales
        return torch.ones(shape, dtype=torch.float16)
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") & (2**63 - 1)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    x = x * 0.02 if len(shape) == 1 else x / math.sqrt(3 * math.prod(shape[1:]))
    return x.to(torch.float16)


@pytest.fixture(scope="module")
def encoder(tokenizer) -> ClipTextEncoder:
    layout = json.loads((REFERENCE / "sd15_layout.json").read_text())["tensors"]
    state = {
        name.removeprefix(TEXT_ENCODER_PREFIX): _reference_tensor(name, shape)
        for name, shape, _ in layout
        if name.startswith(TEXT_ENCODER_PREFIX)
    }
    # Built on the meta device to skip transformers' random init (1.7 s); every tensor is assigned below.
    with torch.device("meta"):
        model = CLIPTextModel(clip_l_config())
    # position_ids is a non-persistent buffer in transformers 5, so load_state_dict does not see it.
    model.embeddings.register_buffer("position_ids", state.pop("embeddings.position_ids"), persistent=False)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)  # CPU: fp16 → fp32
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    return ClipTextEncoder(model, tokenizer)


@pytest.fixture(scope="module")
def reference_outputs() -> dict[str, torch.Tensor]:
    return load_file(REFERENCE / "conditioning.safetensors")


@pytest.mark.parametrize("case", PROMPTS, ids=lambda c: f"prompt{c['index']}")
def test_cond_and_pooled_match_comfyui(encoder: ClipTextEncoder, reference_outputs, case: dict) -> None:
    layer = case["stop_at_clip_layer"] or -1
    cond, pooled = encoder.with_layer(layer).encode(case["prompt"])
    want_cond, want_pooled = reference_outputs[case["cond_key"]], reference_outputs[case["pooled_key"]]
    assert cond.dtype == pooled.dtype == torch.float32
    assert list(cond.shape) == case["cond_shape"] and pooled.shape == want_pooled.shape
    assert (cond - want_cond).abs().max().item() <= TOLERANCE
    assert (pooled - want_pooled).abs().max().item() <= TOLERANCE


def test_with_layer_shares_weights_and_keeps_pooled(encoder: ClipTextEncoder) -> None:
    skip = encoder.with_layer(-2)
    assert skip.model is encoder.model and skip.tokenizer is encoder.tokenizer
    cond, pooled = encoder.encode("a red apple")
    cond2, pooled2 = skip.encode("a red apple")
    assert torch.equal(pooled, pooled2) and not torch.allclose(cond, cond2)
