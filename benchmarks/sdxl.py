"""SDXL warm seed change: Sumi vs a plain diffusers StableDiffusionXLPipeline on the same weights, CPU, fp32.

    .venv/bin/python benchmarks/sdxl.py [--size 512] [--steps 4] [--repeats 2] [--threads 2] [--json OUT.json]
    .venv/bin/python benchmarks/sdxl.py --quick       # smoke run of the harness on the tiny SDXL file (about 1 min)

Both systems get the same file (the 6.9 GB SDXL reference checkpoint Sumi's generator builds into $SUMI_CACHE_DIR or
~/.cache/sumi, content hash checked; `--quick`: Sumi's tiny SDXL file instead, at 256 px), prompt, negative prompt,
seed and initial noise, `--steps` euler steps (Sumi: `normal` schedule; diffusers: EulerDiscreteScheduler, "leading"
spacing), cfg 7, fp32, the same thread count. diffusers' pipeline comes from `from_single_file` with a config folder
written from the file's shapes and its own weight conversion (tests/diffusers_ref.py).

Each system runs in its own warm process (as a server would): start -> first image (imports, load, run), an
identical re-run (Sumi must run 0 nodes), then the seed changed. Unlike benchmarks/txt2img.py the two processes never
live at the same time: each holds about 14 GB in fp32 and the machine has 24 GB. Repeats alternate the order
(Sumi first on even repeats, diffusers first on odd ones); cells are medians. Peak RSS is each child's own
(os.wait4). The harness (warm processes, disturbance checks, retries) is benchmarks/txt2img.py's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import txt2img as harness

REPO = harness.REPO
CKPT_NAME = "reference_sdxl.safetensors"
TINY_NAME = "sumi_tiny_sdxl.safetensors"
TARGETS = {"warm_seed": 0.9}  # the target for SDXL: Sumi / diffusers on a warm seed change
NEXT = REPO.parent.parent / "shared" / "reference" / "parity-next"
if not NEXT.is_dir():
    NEXT = Path("/work/shared/reference/parity-next")


def default_checkpoint() -> Path:
    cache = os.environ.get("SUMI_CACHE_DIR") or Path.home() / ".cache" / "sumi"
    return Path(cache) / CKPT_NAME


def ensure_checkpoint(ckpt: Path) -> None:
    """Build the SDXL reference (about 1 minute, 6.9 GB) with Sumi's generator; its content hash is the recipe's."""
    if ckpt.is_file():
        return
    recipe = json.loads((NEXT / "checkpoints.json").read_text())[CKPT_NAME]
    print(f"building the SDXL reference checkpoint at {ckpt} (6.9 GB, about a minute)...", file=sys.stderr)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    partial = ckpt.with_suffix(".partial")
    code = ("import sys; from nodes.diffusion.fixtures import write_reference_checkpoint as w; "
            "print(w(sys.argv[1], sys.argv[2], buffers=False))")
    digest = subprocess.run([sys.executable, "-c", code, str(partial), str(NEXT.parents[1] / recipe["layout"])],
                            cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()
    if digest != recipe["content_sha256"]:
        raise RuntimeError(f"rebuilt {CKPT_NAME} has content hash {digest}, the recipe says {recipe['content_sha256']}")
    partial.replace(ckpt)


def build_tiny(folder: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from nodes.diffusion.fixtures import build_tiny_checkpoint

    return build_tiny_checkpoint(folder / TINY_NAME, family="sdxl")


def _sdxl_pipeline(ckpt: Path, threads: int) -> Any:
    import torch

    torch.set_num_threads(threads)
    from diffusers import StableDiffusionXLPipeline

    from tests.diffusers_ref import pipeline

    return pipeline(StableDiffusionXLPipeline, ckpt, Path(tempfile.mkdtemp(prefix="sumi_sdxl_cfg_")), torch.float32)


def child_sumi(args: argparse.Namespace) -> None:
    harness.child_sumi_warm(args, ckpt_name=Path(args.checkpoint).name)


def child_diffusers(args: argparse.Namespace) -> None:
    harness.child_diffusers_warm(args, load=_sdxl_pipeline)


CHILDREN = {"sumi": child_sumi, "diffusers": child_diffusers}


def measure(args: argparse.Namespace, ckpt: Path, tmp: Path) -> dict[str, list[dict[str, Any]]]:
    """Per system, one entry per repeat: the phases (first, identical, seed) and the process's peak RSS."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    me = str(Path(__file__).resolve())
    cells: dict[str, list[dict[str, Any]]] = {"sumi": [], "diffusers": []}
    for rep in range(args.repeats):
        order = ("sumi", "diffusers") if rep % 2 == 0 else ("diffusers", "sumi")
        for system in order:
            run_dir = tmp / f"r{rep}_{system}"
            run_dir.mkdir()
            harness.wait_quiet(args.wait_quiet)
            cmd = [sys.executable, me, "--child", system, "--size", str(args.size), "--tmp", str(tmp),
                   "--out", str(run_dir / "out"), "--threads", str(args.threads), "--steps", str(args.steps),
                   "--checkpoint", str(ckpt)]
            worker = harness.Worker(system, cmd, run_dir / f"{system}.log", env)
            phases: dict[str, Any] = {}
            try:
                phases["first"] = {**worker.read(), "attempts": 1}
                for name in ("identical", "seed"):
                    phases[name] = harness.warm_scenario(args, worker, name)
            finally:
                end = worker.close()
            entry = {**end, "phases": phases}
            cells[system].append(entry)
            print(f"[rep {rep + 1}/{args.repeats}] {system}: " + ", ".join(
                f"{k} {v['s']:.2f}s" + (f" ({len(v['ran'])} nodes)" if "ran" in v else "") for k, v in phases.items())
                + f"; peak RSS {end['rss_gib']:.2f} GiB", file=sys.stderr, flush=True)
    return cells


def summarize(cells: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for name, scenario, target in (("first", "warm: start -> first image", None),
                                   ("identical", "warm: identical re-run", None),
                                   ("seed", "warm: seed changed", TARGETS["warm_seed"])):
        s_vals = [c["phases"][name]["s"] for c in cells["sumi"]]
        d_vals = [c["phases"][name]["s"] for c in cells["diffusers"]]
        foreign = [c["phases"][name]["foreign_cpu_s"] for c in cells["sumi"] + cells["diffusers"]]
        ran = max(len(c["phases"][name]["ran"]) for c in cells["sumi"])
        verdict = ("PASS" if ran == 0 else "MISS") if name == "identical" else None
        rows.append(harness._row(0, scenario, "s", s_vals, d_vals, target, foreign, s_vals + d_vals,
                                 f"Sumi ran {ran} node(s)", verdict))
    rss_s, rss_d = [c["rss_gib"] for c in cells["sumi"]], [c["rss_gib"] for c in cells["diffusers"]]
    rows.append(harness._row(0, "warm: process peak RSS", "GiB", rss_s, rss_d, None, [], []))
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, ckpt: Path) -> None:
    print(f"SDXL ({ckpt.name}) {args.size}x{args.size}, {args.steps} euler steps, cfg {harness.CFG}, fp32, "
          f"{args.threads} threads, median of {args.repeats} repeat(s); ratio = Sumi / diffusers (lower is better)")
    harness.print_rows(rows, with_size=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, help="square size in pixels")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="repeats, order alternating (median reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: the tiny SDXL file, 256 px, 1 repeat")
    parser.add_argument("--json", metavar="FILE", help="also write every measurement and the table here")
    parser.add_argument("--checkpoint", help=f"default: $SUMI_CACHE_DIR or ~/.cache/sumi, /{CKPT_NAME}")
    harness.add_harness_options(parser, CHILDREN)
    args = parser.parse_args(argv)

    if args.child:
        sys.path.insert(0, str(REPO))
        CHILDREN[args.child](args)
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="sumi_bench_sdxl_"))
    if args.quick:
        args.size, args.repeats = 256, 1
        ckpt = Path(args.checkpoint).expanduser().resolve() if args.checkpoint else build_tiny(tmp)
    else:
        ckpt = Path(args.checkpoint).expanduser().resolve() if args.checkpoint else default_checkpoint()
        ensure_checkpoint(ckpt)
    harness.page_in(ckpt)
    harness.prepare_base(tmp, ckpt, ckpt.name)
    print(f"checkpoint {ckpt}; work folder {tmp}", file=sys.stderr)
    started = time.time()
    try:
        cells = measure(args, ckpt, tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    rows = summarize(cells)
    print_table(rows, args, ckpt)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "settings": {"size": args.size, "repeats": args.repeats, "threads": args.threads, "steps": args.steps,
                         "cfg": harness.CFG, "seed": harness.SEED, "prompt": harness.PROMPT,
                         "negative": harness.NEGATIVE, "checkpoint": str(ckpt), "targets": TARGETS,
                         "started": started, "duration_s": time.time() - started},
            "rows": rows, "raw": cells}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
