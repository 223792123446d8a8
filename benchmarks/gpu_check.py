"""One prepared GPU check (issue 9): the SD1.5 and SDXL examples on CUDA in fp16 against the CPU in fp32, and
sampling speed against a plain diffusers pipeline on the same card. Writes $OUT/gpu_check.json (default ./out).

    python benchmarks/gpu_check.py                  # on the GPU machine (about 6 to 8 minutes on one H200)
    python benchmarks/gpu_check.py --cpu-dry-run    # the same code paths on the CPU, tiny models only (2 minutes)

Parts, each recorded on its own (an error in one is written to the report and the next part runs):
1. examples: the shipped workflows txt2img, sdxl_base_refiner and sdxl_turbo on Sumi's tiny models, run on the
   CPU in fp32 and on CUDA in fp16 (`--precision fp16`, all three models); every output image must be finite and
   within IMAGE_BOUND (mean |Δ| in 0..1) of the CPU one.
2. reference: the full-size reference SD1.5 and SDXL checkpoints Sumi's generator builds (into $SUMI_CACHE_DIR or
   ~/.cache/sumi, content hash checked; SDXL needs parity-next's sdxl_base_layout.json, see `--sdxl-layout`), a
   txt2img at 256 px (4 euler steps, cfg 7) on the CPU in fp32 and on CUDA in fp16, compared the same way; then
   on CUDA a warm seed change at 512 px (SD1.5) / 1024 px (SDXL), `--steps` steps, Sumi (executor, KSampler) and
   diffusers (`from_single_file` on the same file, tests/diffusers_ref.py, fp16) one after the other: it/s between
   the first and the last step's end (each step's end synchronised on both), the whole call's wall time, peak CUDA
   memory of each. Sumi's fp16 image is compared with diffusers' too (info: 4 steps at timesteps 999/666/333/0,
   where the two samplers agree in fp32, see tests/nodes/test_diffusers_pipelines.py).
In the report `ratio_seed_change` is Sumi's seconds / diffusers' (lower is better for Sumi), `ratio_it_per_s` Sumi's
it/s / diffusers' (higher is better). With --cpu-dry-run, "cuda" is the CPU, still in fp16, sizes are 64 px
and the reference part runs on the tiny models, so every line of the script runs without a GPU.

Needs a Python with torch (CUDA build), diffusers, transformers, safetensors, numpy, pillow, networkx (the project's
requirements.txt). Nothing is downloaded. `--budget-s` stops starting new parts once that many seconds have passed.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

IMAGE_BOUND = 0.02  # mean |fp16 − fp32| over the image in 0..1 (2 % of the range); the max is recorded too
EXAMPLES = ("txt2img", "sdxl_base_refiner", "sdxl_turbo")
TIMESTEPS = [999, 666, 333, 0]  # KSampler euler/normal at 4 steps: integer timesteps diffusers can be given
SEED = 42


def _layout_candidates() -> list[Path]:
    env = os.environ.get("SUMI_PARITY_NEXT")
    found = [Path(env)] if env else []
    return [*found, REPO / "shared" / "reference" / "parity-next", REPO.parent / "shared" / "reference" / "parity-next",
            REPO.parent.parent / "shared" / "reference" / "parity-next", Path("/work/shared/reference/parity-next")]


def cache_dir() -> Path:
    return Path(os.environ.get("SUMI_CACHE_DIR") or Path.home() / ".cache" / "sumi")


def reference_checkpoint(name: str, sdxl_layout: Path | None) -> Path:
    """A reference checkpoint from the cache, built by Sumi's generator if absent (SD1.5's layout is in the repo;
    SDXL's content hash is checked against parity-next's recipe when it is there)."""
    from nodes.diffusion.fixtures import write_reference_checkpoint

    path = cache_dir() / name
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    if name == "reference_sd15.safetensors":
        write_reference_checkpoint(partial, REPO / "tests" / "parity" / "reference" / "sd15_layout.json")
    else:
        if sdxl_layout is None or not sdxl_layout.is_file():
            raise FileNotFoundError(f"no sdxl_base_layout.json (looked in {[str(p) for p in _layout_candidates()]}); "
                                    "pass --sdxl-layout or copy it into the checkout")
        digest = write_reference_checkpoint(partial, sdxl_layout, buffers=False)
        recipe = sdxl_layout.parent / "checkpoints.json"
        if recipe.is_file():
            want = json.loads(recipe.read_text())[name]["content_sha256"]
            if digest != want:
                raise RuntimeError(f"{name}: content hash {digest}, the recipe says {want}")
    partial.replace(path)
    return path


class Check:
    """The report: environment, then one entry per part; `part` records errors instead of raising them."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.budget_s, self.t0 = out, budget_s, time.perf_counter()
        self.report: dict[str, Any] = {"parts": {}, "passed": True}

    def part(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        elapsed = time.perf_counter() - self.t0
        if elapsed > self.budget_s:
            self.report["parts"][name] = {"skipped": f"time budget spent ({elapsed:.0f} s > {self.budget_s:.0f} s)"}
            self.report["passed"] = False
            self.save()
            return
        print(f"--- {name}", flush=True)
        t = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # a broken part is data for the report; the next part still runs
            result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(), "passed": False}
        result["seconds"] = round(time.perf_counter() - t, 2)
        self.report["parts"][name] = result
        self.report["passed"] = self.report["passed"] and result.get("passed", True)
        print(json.dumps({k: v for k, v in result.items() if k != "traceback"}, indent=1, default=str), flush=True)
        self.save()
        _free()

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.report, indent=1, default=str))


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment(accel: str) -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
           "transformers": transformers.__version__, "accelerated_device": accel,
           "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return env


# ------------------------------------------------------------------------------------------------ Sumi runs


class Sumi:
    """One executor on one device/precision policy, over a base folder shared by all runs (models built once)."""

    def __init__(self, base: Path, device: str, precision: str) -> None:
        from executor.runner import Executor
        from nodes import build_registry, devices, paths

        paths.configure(base)
        paths.ensure_example_inputs()
        devices.configure(device, precision)
        self.device = device
        self.executor = Executor(build_registry())

    def run(self, prompt: dict[str, Any], marks: list[float] | None = None) -> Any:
        import torch

        def on_event(event: Any) -> None:
            if marks is not None and event.type == "progress" and event.data.get("node") == "5":  # KSampler
                if self.device.startswith("cuda"):
                    torch.cuda.synchronize()
                marks.append(time.perf_counter())

        result = self.executor.run(prompt, on_event=on_event)
        if result.status != "success":
            raise RuntimeError(f"Sumi run failed: {(result.error or {}).get('exception_message', result.error)}")
        return result

    def close(self) -> None:
        self.executor.cache.clear()
        del self.executor
        _free()


def saved_images(prompt: dict[str, Any], result: Any) -> dict[str, Any]:
    """{SaveImage node: the IMAGE it saved} of a finished run."""
    out = {}
    for nid, node in prompt.items():
        if node["class_type"] == "SaveImage":
            src, slot = node["inputs"]["images"]
            out[nid] = result.values[src][slot].float().cpu()
    return out


def compare(fast: Any, ref: Any) -> dict[str, Any]:
    import torch

    diff = (fast.float().cpu() - ref.float().cpu()).abs()
    return {"finite": bool(torch.isfinite(fast).all()), "mean_abs": float(diff.mean()), "max_abs": float(diff.max()),
            "passed": bool(torch.isfinite(fast).all()) and float(diff.mean()) <= IMAGE_BOUND}


def part_examples(base: Path, accel: str, precision: str) -> dict[str, Any]:
    """The shipped example workflows on the tiny models: accelerated vs CPU fp32."""
    prompts = {name: json.loads((REPO / "workflows" / f"{name}.json").read_text()) for name in EXAMPLES}
    refs: dict[str, dict[str, Any]] = {}
    cpu = Sumi(base, "cpu", "fp32")
    for name, prompt in prompts.items():
        refs[name] = saved_images(prompt, cpu.run(prompt))
    cpu.close()
    fast = Sumi(base, accel, precision)
    out: dict[str, Any] = {}
    for name, prompt in prompts.items():
        t = time.perf_counter()
        images = saved_images(prompt, fast.run(prompt))
        out[name] = {"seconds": round(time.perf_counter() - t, 3),
                     **{nid: compare(images[nid], refs[name][nid]) for nid in images}}
    fast.close()
    out["passed"] = all(c["passed"] for r in out.values() for c in r.values() if isinstance(c, dict))
    return out


# ------------------------------------------------------------------------------------------------ reference models


def txt2img(ckpt: str, size: int, steps: int, seed: int = SEED) -> dict[str, Any]:
    from txt2img import PROMPT, workflow

    return workflow(size, seed, PROMPT, "gpu_check", steps, ckpt_name=ckpt)


def diffusers_pipe(ckpt: Path, family: str, dtype: Any, device: str, folder: Path) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from tests.diffusers_ref import pipeline

    cls = StableDiffusionXLPipeline if family.startswith("sdxl") else StableDiffusionPipeline
    return pipeline(cls, ckpt, folder, dtype).to(device)


def diffusers_run(pipe: Any, size: int, steps: int | None, seed: int, device: str,
                  marks: list[float] | None = None) -> Any:
    """One call as the Sumi graph does it: same prompt, negative prompt, noise (CPU randn from the seed), cfg 7;
    the 4-step runs get Sumi's timesteps."""
    import torch
    from txt2img import CFG, NEGATIVE, PROMPT

    noise = torch.randn((1, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(seed))

    def on_step(_p: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if marks is not None:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            marks.append(time.perf_counter())
        return kwargs

    steps_kw = {"timesteps": TIMESTEPS} if steps is None else {"num_inference_steps": steps}
    with torch.no_grad():
        return pipe(PROMPT, negative_prompt=NEGATIVE, height=size, width=size, guidance_scale=CFG,
                    latents=noise.to(device, pipe.unet.dtype), output_type="pt", callback_on_step_end=on_step,
                    **steps_kw).images.movedim(1, -1).float().cpu()


def _rate(marks: list[float]) -> float | None:
    return (len(marks) - 1) / (marks[-1] - marks[0]) if len(marks) > 1 and marks[-1] > marks[0] else None


def _peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def part_reference(base: Path, ckpt: Path, family: str, accel: str, precision: str, small: int, large: int,
                   steps: int) -> dict[str, Any]:
    """One checkpoint: closeness at `small` px (4 steps), then warm seed-change speed at `large` px, Sumi and
    diffusers on the accelerated device."""
    import torch

    from nodes.devices import DTYPES

    name = ckpt.name
    link = base / "models" / "checkpoints" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(ckpt)
    out: dict[str, Any] = {"checkpoint": str(ckpt), "family": family}
    cpu = Sumi(base, "cpu", "fp32")
    ref = saved_images(txt2img(name, small, 4), cpu.run(txt2img(name, small, 4)))["7"]
    cpu.close()

    fast = Sumi(base, accel, precision)
    mine = saved_images(txt2img(name, small, 4), fast.run(txt2img(name, small, 4)))["7"]
    out["fp16_vs_cpu_fp32"] = compare(mine, ref)
    fast.run(txt2img(name, large, steps, SEED))  # warm: load, first run at the large size
    _peak_reset(accel)
    marks: list[float] = []
    t = time.perf_counter()
    fast.run(txt2img(name, large, steps, SEED + 1), marks)
    out["sumi"] = {"seed_change_s": round(time.perf_counter() - t, 3), "it_per_s": _rate(marks),
                   "peak_gpu_gib": _peak_gib(accel)}
    fast.close()

    dtype = DTYPES[precision]
    pipe = diffusers_pipe(ckpt, family, dtype, accel, base / f"diffusers_{family}")
    theirs = diffusers_run(pipe, small, None, SEED, accel)
    out["sumi_vs_diffusers_same_precision"] = {k: v for k, v in compare(mine, theirs).items() if k != "passed"}
    diffusers_run(pipe, large, steps, SEED, accel)  # warm
    _peak_reset(accel)
    marks = []
    t = time.perf_counter()
    diffusers_run(pipe, large, steps, SEED + 1, accel, marks)
    out["diffusers"] = {"seed_change_s": round(time.perf_counter() - t, 3), "it_per_s": _rate(marks),
                        "peak_gpu_gib": _peak_gib(accel)}
    del pipe
    s, d = out["sumi"], out["diffusers"]
    out["ratio_seed_change"] = round(s["seed_change_s"] / d["seed_change_s"], 3)
    if s["it_per_s"] and d["it_per_s"]:
        out["ratio_it_per_s"] = round(s["it_per_s"] / d["it_per_s"], 3)
    out["settings"] = {"small": small, "large": large, "steps": steps, "precision": precision,
                       "dtype": str(dtype), "device": accel, "torch_threads": torch.get_num_threads()}
    out["passed"] = out["fp16_vs_cpu_fp32"]["passed"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="no GPU: the CPU in fp16 as the fast side")
    parser.add_argument("--out", default=os.environ.get("OUT") or "out", help="report folder (default $OUT or ./out)")
    parser.add_argument("--work", help="base folder for models/outputs (default: a new temporary folder)")
    parser.add_argument("--steps", type=int, default=20, help="steps of the speed runs")
    parser.add_argument("--sdxl-layout", help="parity-next's sdxl_base_layout.json (to build the SDXL reference)")
    parser.add_argument("--skip-reference", action="store_true", help="only the example workflows")
    parser.add_argument("--budget-s", type=float, default=540.0, help="start no new part after this many seconds")
    args = parser.parse_args(argv)

    import torch

    if args.cpu_dry_run:
        accel, precision, small, sizes, steps = "cpu", "fp16", 64, {"sd15": 64, "sdxl": 64}, 3
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --cpu-dry-run to check the script on the CPU", file=sys.stderr)
            return 2
        accel, precision, small, sizes, steps = "cuda", "fp16", 256, {"sd15": 512, "sdxl": 1024}, args.steps
    base = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sumi_gpu_check_"))
    check = Check(Path(args.out), args.budget_s)
    check.report["environment"] = environment(accel)
    check.report["settings"] = {"precision": precision, "image_bound_mean_abs": IMAGE_BOUND, "base": str(base)}
    check.part("examples", lambda: part_examples(base, accel, precision))
    if not args.skip_reference:
        layout = Path(args.sdxl_layout) if args.sdxl_layout else next(
            (p / "sdxl_base_layout.json" for p in _layout_candidates() if (p / "sdxl_base_layout.json").is_file()),
            None)
        if args.cpu_dry_run:  # the same code on the tiny files: the reference ones need 14 GB in fp32
            from nodes import models, paths

            paths.configure(base)
            files = {"sd15": models.ensure_default_checkpoint(),
                     "sdxl": models.ensure_default_checkpoint("sumi_tiny_sdxl.safetensors")}
        else:
            files = {"sd15": lambda: reference_checkpoint("reference_sd15.safetensors", layout),
                     "sdxl": lambda: reference_checkpoint("reference_sdxl.safetensors", layout)}
        for family, file in files.items():
            check.part(f"reference_{family}", lambda f=family, p=file: part_reference(
                base, p() if callable(p) else p, f, accel, precision, small, sizes[f], steps))
    check.save()
    print(f"report: {Path(args.out) / 'gpu_check.json'}; passed: {check.report['passed']}")
    return 0 if check.report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
