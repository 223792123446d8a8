"""ComfyUI's own SDXL workflow templates (editor format, unchanged from the MIT `comfyui-workflow-templates-json`
package: see tests/fixtures/templates/README.md) convert, validate and run on Sumi once their checkpoint names
point at Sumi's tiny SDXL files: base → refiner hand-over through KSamplerAdvanced with PrimitiveNode-shared
steps, and SDXL-Turbo's custom sampling."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from executor.runner import Executor
from executor.ui_format import ui_to_api
from nodes import build_registry, paths

TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "templates"
TINY = {"sd_xl_base_1.0.safetensors": "sumi_tiny_sdxl.safetensors",
        "sd_xl_refiner_1.0.safetensors": "sumi_tiny_sdxl_refiner.safetensors",
        "sd_xl_turbo_1.0_fp16.safetensors": "sumi_tiny_sdxl.safetensors"}


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    saved = paths.FOLDERS
    paths.configure(tmp_path_factory.mktemp("templates"))
    yield Executor(build_registry())
    paths.FOLDERS = saved


def converted(name: str, ex: Executor) -> dict[str, Any]:
    """The template as the API prompt ComfyUI would queue, its models pointed at the tiny files."""
    graph = json.loads((TEMPLATES / f"{name}.json").read_text())
    prompt, errors = ui_to_api(graph, ex.registry)
    assert errors == []
    for spec in prompt.values():
        if spec["class_type"] == "CheckpointLoaderSimple":
            spec["inputs"]["ckpt_name"] = TINY[spec["inputs"]["ckpt_name"]]
        if spec["class_type"] == "EmptyLatentImage":  # the tiny models' attention makes 1024² slow on a CPU
            spec["inputs"].update(width=64, height=64)
    return prompt


@pytest.mark.parametrize("name", ["sdxl_simple_example", "sdxl_refiner_prompt_example"])
def test_sdxl_base_refiner_templates_run(ex: Executor, name: str) -> None:
    prompt = converted(name, ex)
    samplers = {nid: spec["inputs"] for nid, spec in prompt.items() if spec["class_type"] == "KSamplerAdvanced"}
    base, refiner = sorted(samplers.values(), key=lambda s: s["start_at_step"])
    # The template's PrimitiveNodes feed one step count to both samplers; the refiner takes over at step 20.
    assert base["steps"] == refiner["steps"] == 25 and base["end_at_step"] == refiner["start_at_step"] == 20
    assert base["add_noise"] == "enable" and refiner["add_noise"] == "disable"
    for spec in samplers.values():  # 4 steps, handing over at 3: the same structure, quick on the CPU
        spec.update(steps=4, **({"end_at_step": 3} if spec["start_at_step"] == 0 else {"start_at_step": 3}))
    result = ex.run(prompt)
    assert result.status == "success", result.error
    loaders = {spec["inputs"]["ckpt_name"]: result.values[nid][0].family
               for nid, spec in prompt.items() if spec["class_type"] == "CheckpointLoaderSimple"}
    assert loaders == {"sumi_tiny_sdxl.safetensors": "sdxl", "sumi_tiny_sdxl_refiner.safetensors": "sdxl_refiner"}
    decoded = next(result.values[nid][0] for nid, spec in prompt.items() if spec["class_type"] == "VAEDecode")
    assert decoded.shape == (1, 64, 64, 3) and torch.isfinite(decoded).all() and decoded.std() > 0
    (saved,) = next(out for out in result.outputs.values())["images"]
    assert (paths.FOLDERS.output / saved["subfolder"] / saved["filename"]).is_file()


def test_sdxl_turbo_template_runs(ex: Executor) -> None:
    prompt = converted("sdxlturbo_example", ex)
    kinds = {spec["class_type"]: spec["inputs"] for spec in prompt.values()}
    assert kinds["SDTurboScheduler"]["steps"] == 1 and kinds["KSamplerSelect"]["sampler_name"] == "euler_ancestral"
    assert kinds["SamplerCustom"]["cfg"] == 1
    result = ex.run(prompt)
    assert result.status == "success", result.error
    decoded = next(result.values[nid][0] for nid, spec in prompt.items() if spec["class_type"] == "VAEDecode")
    assert decoded.shape == (1, 64, 64, 3) and torch.isfinite(decoded).all() and decoded.std() > 0
