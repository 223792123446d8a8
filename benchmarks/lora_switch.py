"""LoRA switch time on a warm model against a full reload (issue 9).

One process, one Executor, the full-size reference SD1.5 checkpoint and the reference kohya LoRA (both built
by Sumi's generator into the cache dir if absent). Each scenario times one run of the same small workflow
(64 px, 1 euler step, so the numbers are dominated by what the scenario changes):

- first run: load the checkpoint, apply the LoRA, encode, sample, decode;
- LoRA re-weighted: strength_model changed (the checkpoint stays cached; the LoRA node and what follows re-run);
- LoRA removed: the same workflow without the LoRA (cached checkpoint, prompts re-encoded, sampled);
- full reload: the models cache cleared, then the LoRA workflow again (what a tool that reloads does).

usage: .venv/bin/python benchmarks/lora_switch.py [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def workflow(lora: bool, strength: float = 0.8) -> dict:
    model, clip = (["10", 0], ["10", 1]) if lora else (["4", 0], ["4", 1])
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "reference_sd15.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple on a wooden table", "clip": clip}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": clip}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 1, "cfg": 7.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": model,
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    if lora:
        prompt["10"] = {"class_type": "LoraLoader", "inputs": {
            "model": ["4", 0], "clip": ["4", 1], "lora_name": "reference_lora_sd15.safetensors",
            "strength_model": strength, "strength_clip": 0.6}}
    return prompt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from executor.runner import Executor
    from nodes import build_registry, devices, paths
    from nodes.diffusion.fixtures import write_lora_by_rule, write_reference_checkpoint

    cache = Path(os.environ.get("SUMI_CACHE_DIR") or Path.home() / ".cache" / "sumi")
    ckpt, lora = cache / "reference_sd15.safetensors", cache / "reference_lora_sd15.safetensors"
    if not ckpt.exists():
        write_reference_checkpoint(ckpt, REPO / "tests" / "parity" / "reference" / "sd15_layout.json")
    if not lora.exists():
        layout = json.loads(Path("/work/shared/reference/parity-next/lora_sd15_layout.json").read_text())["tensors"]
        write_lora_by_rule(lora, {n: s for n, s, _ in layout})
    base = Path(tempfile.mkdtemp(prefix="sumi-lora-bench-"))
    for folder, f in (("checkpoints", ckpt), ("loras", lora)):
        (base / "models" / folder).mkdir(parents=True)
        (base / "models" / folder / f.name).symlink_to(f)
    paths.configure(base)
    devices.configure("cpu", "fp32", threads=args.threads)
    ex = Executor(build_registry())

    def timed(prompt: dict) -> float:
        t = time.perf_counter()
        result = ex.run(prompt)
        assert result.status == "success", result.error
        return time.perf_counter() - t

    times: dict[str, list[float]] = {k: [] for k in ("first run", "LoRA re-weighted", "LoRA removed", "full reload")}
    for r in range(args.repeats):
        ex.cache.clear()
        times["first run"].append(timed(workflow(True, 0.8 + r / 100)))
        times["LoRA re-weighted"].append(timed(workflow(True, 0.5 + r / 100)))
        times["LoRA removed"].append(timed(workflow(False)))
        ex.cache.clear("models")
        times["full reload"].append(timed(workflow(True, 0.7 + r / 100)))
    for k, v in times.items():
        print(f"{k:18s} median {statistics.median(v):6.2f} s  ({', '.join(f'{x:.2f}' for x in v)})")
    ratio = statistics.median(times["LoRA re-weighted"]) / statistics.median(times["full reload"])
    print(f"LoRA switch / full reload: {ratio:.2f}x")


if __name__ == "__main__":
    main()
