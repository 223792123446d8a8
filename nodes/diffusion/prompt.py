"""ComfyUI's prompt syntax: emphasis weights and 77-token chunks.

Weights: `(text)` multiplies the weight by 1.1 per nesting level; `(text:1.3)` sets it to 1.3 (the
number after the last colon, replacing rather than multiplying the outer weight); `\\(` and `\\)`
are literal parentheses. There is no `[...]` syntax. An unbalanced parenthesis is kept as text.

Chunks: each weighted segment is split into words on spaces (newlines count as spaces), each word
is tokenized on its own, and the tokens are packed into chunks of start + 75 + end, padded to 77. A
word of 8 or more tokens may be split across chunks; a shorter word that does not fit moves whole
to the next chunk.

Textual inversion: `embedding:name` (see `tokenize_with_weights`) when the caller gives an embedding lookup.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

log = logging.getLogger("sumi.prompt")

EMPHASIS = 1.1
CHUNK_LENGTH = 77
LONG_WORD = 8  # a word with at least this many tokens may be split across chunks
# Private-use characters stand in for escaped parentheses while the structure is parsed.
_LITERAL_OPEN, _LITERAL_CLOSE = "\ue000", "\ue001"

TokenWeights = list[tuple[int | torch.Tensor, float]]  # a tensor: an embedding vector


def _protect_escapes(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in ("\\(", "\\)"):
            out.append(_LITERAL_OPEN if pair == "\\(" else _LITERAL_CLOSE)
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _restore_escapes(text: str) -> str:
    return text.replace(_LITERAL_OPEN, "(").replace(_LITERAL_CLOSE, ")")


def _top_level_pieces(text: str) -> list[str]:
    """Split into plain runs and outermost `( … )` groups, by a depth counter.

    The counter may go negative on a stray `)`; a group only starts at depth 0 and ends when
    the depth returns to 0, which is how ComfyUI treats unbalanced input.
    """
    pieces: list[str] = []
    current, depth = "", 0
    for ch in text:
        if ch == "(" and depth == 0 and current:
            pieces.append(current)
            current = ""
        current += ch
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                pieces.append(current)
                current = ""
    if current:
        pieces.append(current)
    return pieces


def _weighted(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for piece in _top_level_pieces(text):
        if len(piece) < 2 or piece[0] != "(" or piece[-1] != ")":
            out.append((piece, weight))
            continue
        inner, inner_weight = piece[1:-1], weight * EMPHASIS
        colon = inner.rfind(":")
        if colon > 0:  # a leading colon is text, not a weight
            try:
                inner, inner_weight = inner[:colon], float(inner[colon + 1 :])
            except ValueError:
                pass  # "(a:b)" is text emphasised by 1.1
        out.extend(_weighted(inner, inner_weight))
    return out


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text segment, weight) pairs, in order, escapes resolved."""
    return [(_restore_escapes(segment), w) for segment, w in _weighted(_protect_escapes(text), 1.0)]


def _pack_chunks(words: Sequence[TokenWeights], start: int, end: int, pad: int) -> list[TokenWeights]:
    room = CHUNK_LENGTH - 2
    chunks: list[TokenWeights] = []
    body: TokenWeights = []
    for word in words:
        splittable = len(word) >= LONG_WORD
        while word:
            if len(body) + len(word) <= room:
                body.extend(word)
                break
            if splittable:
                free = room - len(body)
                body.extend(word[:free])
                word = word[free:]
            chunks.append(body)
            body = []
    chunks.append(body)
    return [[(start, 1.0), *b, (end, 1.0)] + [(pad, 1.0)] * (room - len(b)) for b in chunks]


EMBEDDING_PREFIX = "embedding:"
EmbeddingLookup = Callable[[str], "torch.Tensor | None"]


def _embedding_word(word: str, lookup: EmbeddingLookup) -> tuple[torch.Tensor | None, str]:
    """(vectors [n, D] or None, leftover text): `embedding:name` with trailing commas kept as text, as ComfyUI."""
    name = word[len(EMBEDDING_PREFIX):]
    vectors = lookup(name)
    if vectors is None:
        stripped = name.rstrip(",")
        if stripped != name:
            vectors = lookup(stripped)
            if vectors is not None:
                return vectors, name[len(stripped):]
        log.warning("embedding %r not found or not for this text encoder: read as text", name)
        return None, word
    return vectors, ""


def tokenize_with_weights(tokenizer: PreTrainedTokenizerBase, text: str, pad: int | None = None,
                          embeddings: EmbeddingLookup | None = None) -> list[TokenWeights]:
    """ComfyUI's chunks for a prompt: a list of 77 (token id, weight) pairs per chunk.

    Start, end and padding tokens weigh 1.0. The empty prompt gives one chunk (start, end, padding).
    `pad` overrides the padding id (SD2's and SDXL's OpenCLIP encoders pad with 0). With `embeddings`, a word
    `embedding:name` becomes that textual-inversion embedding's vectors, one token slot each (the token is the
    vector itself, a tensor, instead of an id), weighted as the words around it.
    """
    items: list[tuple[str | torch.Tensor, float]] = []  # words (tokenized below, in one batch) and embeddings
    for segment, weight in parse_prompt_weights(text):
        for word in segment.replace("\n", " ").split(" "):
            if not word:
                continue
            if embeddings is not None and word.startswith(EMBEDDING_PREFIX):
                vectors, word = _embedding_word(word, embeddings)
                if vectors is not None:
                    items.append((vectors if vectors.ndim > 1 else vectors[None], weight))
                if not word:
                    continue
            items.append((word, weight))
    words = [w for w, _ in items if isinstance(w, str)]
    ids = iter(tokenizer(words, add_special_tokens=False, verbose=False)["input_ids"] if words else [])
    tokens = [[(t, weight) for t in (next(ids) if isinstance(item, str) else item)] for item, weight in items]
    end = tokenizer.eos_token_id
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    return _pack_chunks(tokens, tokenizer.bos_token_id, end, pad)
