"""The CLIP BPE tokenizer, derived offline from OpenAI's `bpe_simple_vocab_16e6.txt.gz`.

transformers ships no CLIP vocabulary, and Sumi never downloads one. The original BPE file ships
inside the `clip-anytorch` wheel (installed with `--no-deps`; importing it would pull in
torchvision, so it is only located, never imported). From it we derive the files transformers'
`CLIPTokenizer` reads: `vocab.json`, `merges.txt`, `tokenizer_config.json`, cached on disk and
loaded once per process. The result is the tokenizer SD1.x, SD2.x and SDXL use (49,408 tokens).
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from transformers import CLIPTokenizer

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
MAX_LENGTH = 77
NUM_MERGES = 48_894  # 49,408 ids - 512 byte tokens - 2 specials
_PACKAGES_WITH_BPE = ("clip", "open_clip")  # both ship the same file next to their sources
_SUBFOLDER = "clip_tokenizer"
_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
INSTALL_HINT = "pip install --no-deps clip-anytorch==2.6.0"


def default_cache_dir() -> Path:
    """Sumi's cache root: `$SUMI_CACHE_DIR`, else `~/.cache/sumi`."""
    return Path(os.environ.get("SUMI_CACHE_DIR") or Path.home() / ".cache" / "sumi")


def find_bpe_file() -> Path:
    """Locate the BPE file inside an installed package, without importing the package."""
    for package in _PACKAGES_WITH_BPE:
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(folder) / BPE_FILENAME
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"The CLIP vocabulary file {BPE_FILENAME} was not found (looked in the packages "
        f"{', '.join(_PACKAGES_WITH_BPE)}). Install it with `{INSTALL_HINT}` "
        "(--no-deps matters: the package's own dependencies include torchvision)."
    )


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


def ensure_tokenizer_files(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the derived files, creating it on first use.

    Written into a temporary sibling folder and renamed into place, so a concurrent process sees
    either no folder or a complete one; whoever renames second discards its copy.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / _SUBFOLDER
    if all((target / name).is_file() for name in _FILES):
        return target
    files = derive_tokenizer_files(find_bpe_file())
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{_SUBFOLDER}-", dir=root))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared between users
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:
            if not all((target / name).is_file() for name in _FILES):
                raise  # not a lost race: the target is something else (a partial folder, a file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@functools.cache
def _load(folder: Path) -> CLIPTokenizer:
    # transformers 5 ignores vocab_file=/merges_file= keywords; from_pretrained(folder) reads them.
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def load_clip_tokenizer(cache_dir: str | os.PathLike[str] | None = None) -> CLIPTokenizer:
    """The CLIP tokenizer (49,408 ids, max length 77), derived on first use, memoised per process."""
    return _load(ensure_tokenizer_files(cache_dir).resolve())
