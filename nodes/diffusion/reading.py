"""Reading checkpoint files safely: .safetensors tensor by tensor with plain `readinto` calls, and pickles
(.ckpt/.pt/.pth/.bin) only through `torch.load(weights_only=True)`. Nothing here knows model families."""
from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SUPPORTED = ("sd15", "sd2", "sdxl", "sdxl_refiner")
SUPPORTED_TEXT = ("SD1.x, SD2.x, SDXL base and SDXL refiner single-file checkpoints (.safetensors, or "
                  ".ckpt/.pt/.pth/.bin holding plain tensors)")

ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


class CheckpointError(Exception):
    """A file Sumi will not load. `reason` is one of REASONS; `detected` says what was found,
    `supported` which families would load."""

    REASONS = ("not_found", "unreadable", "unsafe_pickle", "unsupported", "mismatch")

    def __init__(self, message: str, *, reason: str = "unsupported", path: str | os.PathLike | None = None,
                 detected: str = "", hint: str = "", supported_text: str = SUPPORTED_TEXT) -> None:
        self.message, self.reason, self.detected, self.hint = message, reason, detected, hint
        self.path = str(path) if path else None
        self.supported, self.supported_text = SUPPORTED, supported_text  # other kinds of files say their own
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [f"{self.path}: {self.message}" if self.path else self.message]
        if self.detected:
            parts.append(f"detected: {self.detected}")
        if self.reason in ("unsupported", "mismatch"):
            parts.append(f"supported: {self.supported_text}")
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "; ".join(parts)


class Lazy(Mapping[str, torch.Tensor]):
    """Names and shapes up front (`meta`), tensor data only when asked for (`get`); every tensor returned
    is the caller's own (never a view of a file mapping or of a reused buffer)."""

    def __init__(self, meta: Mapping[str, torch.Tensor], get: Callable[[str], torch.Tensor]) -> None:
        self.meta, self._get = meta, get

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the tensor
        return name in self.meta

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.meta:
            raise KeyError(name)
        return self._get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.meta)

    def __len__(self) -> int:
        return len(self.meta)


class _SafetensorsReader:
    """A .safetensors file read with plain `readinto` calls, tensor by tensor.

    Not memory-mapped on purpose: pages of a mapping count towards the process's resident memory, so a
    mapped 2 GB fp16 file converted to 4 GB of fp32 peaks at 6 GB. Here a tensor already in the wanted
    dtype is read straight into its own storage, and one that needs a cast passes through a single reused
    staging buffer, so loading peaks at the converted weights plus the largest tensor.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "rb")  # closed by close()
        self._stage = torch.empty(0, dtype=torch.uint8)
        try:
            self.entries = self._parse_header()
        except BaseException:
            self._file.close()
            raise
        self.meta = {k: torch.empty(shape, dtype=dt, device="meta") for k, (dt, shape, _, _) in self.entries.items()}

    def _parse_header(self) -> dict[str, tuple[torch.dtype, list[int], int, int]]:
        size = os.fstat(self._file.fileno()).st_size
        head = self._file.read(8)
        if len(head) < 8:
            raise ValueError("shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise ValueError(f"header length {n} does not fit a {size}-byte file")
        try:
            header = json.loads(self._file.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"header is not JSON: {e}") from e
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        start, data = 8 + n, size - 8 - n
        entries = {}
        for name, e in header.items():
            if name == "__metadata__":
                continue
            if isinstance(e, dict) and isinstance(e.get("dtype"), str) and e["dtype"] not in ST_DTYPES:
                raise ValueError(f"tensor {name!r} is stored as {e['dtype']}, a dtype Sumi does not read "
                                 f"(it reads {', '.join(ST_DTYPES)})")
            try:
                dtype, shape, (begin, end) = ST_DTYPES[e["dtype"]], [int(s) for s in e["shape"]], e["data_offsets"]
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"tensor {name!r}: bad header entry {e!r}") from exc
            nbytes = math.prod(shape) * dtype.itemsize
            if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data) \
                    or end - begin != nbytes or any(s < 0 for s in shape):
                raise ValueError(f"tensor {name!r}: offsets {begin}..{end} do not hold shape {shape} "
                                 f"{e['dtype']} inside {data} data bytes")
            entries[name] = (dtype, shape, start + begin, nbytes)
        return entries

    def _read(self, offset: int, out: torch.Tensor) -> None:
        view = out.reshape(-1).view(torch.uint8).numpy()
        self._file.seek(offset)
        if self._file.readinto(view) != view.nbytes:
            raise CheckpointError("the file ended inside a tensor (was it changed while loading?)",
                                  reason="unreadable", path=self.path)

    def read(self, name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """A new tensor holding `name`, cast to `dtype` and moved to `device` on the way."""
        stored, shape, offset, nbytes = self.entries[name]
        dtype = dtype or stored
        if dtype == stored and torch.device(device).type == "cpu":
            out = torch.empty(shape, dtype=stored)
            self._read(offset, out)
            return out
        if self._stage.numel() < nbytes:
            self._stage = torch.empty(nbytes, dtype=torch.uint8)
        staged = self._stage[:nbytes]
        self._read(offset, staged)
        out = staged.view(stored).reshape(shape).to(device=device, dtype=dtype)  # a copy: dtype/device differ
        return out

    def order(self) -> list[str]:
        """Tensor names in file order (sequential reads)."""
        return sorted(self.entries, key=lambda k: self.entries[k][2])

    def close(self) -> None:
        self._stage = torch.empty(0, dtype=torch.uint8)
        self._file.close()


class Source:
    """An open checkpoint: `meta` (names → meta tensors), `read(name, device, dtype)` giving a new tensor
    per call, and `order()`, the names in the order reading them is cheapest."""

    def __init__(self, meta: Mapping[str, torch.Tensor], read: Callable[..., torch.Tensor],
                 order: Callable[[], list[str]]) -> None:
        self.meta, self.read, self.order = meta, read, order


@contextlib.contextmanager
def open_checkpoint(path: Path) -> Iterator[Source]:
    if not path.is_file():
        raise CheckpointError("file not found", reason="not_found", path=path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            reader = _SafetensorsReader(path)
        except (ValueError, OSError) as e:
            raise CheckpointError(f"not a readable safetensors file ({e})", reason="unreadable", path=path) from e
        try:
            yield Source(reader.meta, reader.read, reader.order)
        finally:
            reader.close()
    elif suffix in PICKLE_SUFFIXES:
        sd = _torch_load(path)

        def read(name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
            t = sd[name]
            out = t.to(device=device, dtype=dtype or t.dtype)
            return out.clone() if out is t else out  # never hand out a tensor that shares the file's mmap

        yield Source(sd, read, lambda: list(sd))
    else:
        raise CheckpointError(f"unknown checkpoint extension {suffix!r}", path=path,
                              hint="use .safetensors (or .ckpt/.pt/.pth/.bin)")


def load_pickle(path: Path) -> object:
    """What a .ckpt/.pt/.pth/.bin file holds, through `torch.load(weights_only=True)` only: tensors and plain
    containers. A pickle holding code is a CheckpointError (reason `unsafe_pickle`), a damaged one `unreadable`."""
    try:
        # mmap keeps a zip-format file on disk until each tensor is used; the legacy format cannot be mapped
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:  # weights_only reports damaged bytes as an UnpicklingError too
            raise CheckpointError("not a readable PyTorch file (damaged pickle)", reason="unreadable",
                                  path=path) from e
        raise CheckpointError("refused for safety: the pickle holds objects other than plain tensors",
                              reason="unsafe_pickle", path=path, detected=f"pickled object {found.group(1)}",
                              hint="convert the file to .safetensors with a trusted tool") from e
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"not a readable PyTorch file ({type(e).__name__}: {e})", reason="unreadable",
                              path=path) from e
    return obj


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    obj = load_pickle(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"holds a {type(obj).__name__}, not a state dict", reason="unreadable", path=path)
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file. Pickles load only with `weights_only=True`; never the network."""
    with open_checkpoint(Path(path)) as source:
        return {k: source.read(k) for k in source.order()}

