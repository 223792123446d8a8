"""Model hashing: Sumi's hasher (`nodes.manifest.hash_file`) against coreutils' `sha256sum` on one large file,
and the hash index's second open against its first.

    .venv/bin/python benchmarks/hash.py [FILE] [--repeats 3] [--json out.json]

FILE defaults to the largest reference checkpoint in `$SUMI_CACHE_DIR` or `~/.cache/sumi` (the parity suite
builds them). The file is read once first, so both tools hash from the page cache; then, per repeat, both
run one after the other, alternating which goes first. Medians; the ratio is Sumi / sha256sum (≤ 1.0 means at
least as fast). Both must print the same digest.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodes import manifest


def default_file() -> Path:
    cache = Path(os.environ.get("SUMI_CACHE_DIR", Path.home() / ".cache" / "sumi"))
    files = sorted(cache.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    if not files:
        raise SystemExit(f"no .safetensors in {cache}; pass a FILE (or run the parity suite once)")
    return files[-1]


def timed(fn) -> tuple[float, str]:
    started = time.perf_counter()
    digest = fn()
    return time.perf_counter() - started, digest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    file = args.file or default_file()
    size = file.stat().st_size
    with open(file, "rb") as f:  # warm the page cache for both tools
        while f.read(64 << 20):
            pass

    def sumi() -> str:
        return manifest.hash_file(file)

    def coreutils() -> str:
        return subprocess.run(["sha256sum", str(file)], check=True, capture_output=True, text=True).stdout.split()[0]

    times: dict[str, list[float]] = {"sumi": [], "sha256sum": []}
    digests = set()
    for repeat in range(args.repeats):
        order = [("sumi", sumi), ("sha256sum", coreutils)]
        for name, fn in order if repeat % 2 == 0 else order[::-1]:
            seconds, digest = timed(fn)
            times[name].append(seconds)
            digests.add(digest)
    if len(digests) != 1:
        raise SystemExit(f"digests differ: {digests}")
    median = {k: statistics.median(v) for k, v in times.items()}

    with tempfile.TemporaryDirectory() as tmp:  # the index: first open hashes, the second reads nothing
        index = manifest.HashIndex(Path(tmp) / "h.db")
        first, _ = timed(lambda: index.sha256(file))
        second, _ = timed(lambda: manifest.HashIndex(Path(tmp) / "h.db").sha256(file))
    result = {"file": str(file), "bytes": size, "repeats": args.repeats, "digest": digests.pop(),
              "seconds": median, "gb_per_s": {k: size / v / 1e9 for k, v in median.items()},
              "ratio_sumi_over_sha256sum": median["sumi"] / median["sha256sum"],
              "index_first_open_s": first, "index_second_open_s": second}
    print(f"{file.name}: {size / 1e9:.2f} GB, median of {args.repeats}")
    for name in ("sumi", "sha256sum"):
        print(f"  {name:10} {median[name]:7.3f} s  {result['gb_per_s'][name]:5.2f} GB/s")
    print(f"  ratio sumi / sha256sum: {result['ratio_sumi_over_sha256sum']:.3f}")
    print(f"  index: first open {first:.3f} s (hashes), second open {second * 1000:.2f} ms (reads nothing)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
