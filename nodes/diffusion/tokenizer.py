"""The CLIP BPE tokenizer SD1.x, SD2.x and SDXL use (49,408 tokens), from files shipped in this repository.

`tokenizers/clip/` holds what transformers' `CLIPTokenizer` reads (`vocab.json`, `merges.txt`,
`tokenizer_config.json`, `special_tokens_map.json`), derived once from OpenAI's `bpe_simple_vocab_16e6.txt.gz`
(tests/nodes/diffusion/test_text_encoding.py re-derives them and checks they are identical when that file is
installed). Shipped, as ComfyUI ships them, rather than derived at first use from a wheel: no install step, no
cache folder, nothing that can be missing. The same files serve CLIP-L, OpenCLIP-H and bigG; only their
padding differs (see clip_encode.RULES).
"""
from __future__ import annotations

import functools
from pathlib import Path

from transformers import CLIPTokenizer

TOKENIZER_DIR = Path(__file__).parent / "tokenizers" / "clip"
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
MAX_LENGTH = 77


@functools.cache
def _load(folder: Path) -> CLIPTokenizer:
    # transformers 5 ignores vocab_file=/merges_file= keywords; from_pretrained(folder) reads them.
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def load_clip_tokenizer() -> CLIPTokenizer:
    """The CLIP tokenizer (49,408 ids, max length 77), memoised per process."""
    return _load(TOKENIZER_DIR.resolve())
