"""`main.py` as a user runs it, in subprocesses, on the tiny checkpoint in a temporary base directory.

Proves: a `--set` sweep exits 0, prints the PNG paths it wrote and loads the model once; `--json` prints
only `{type, data}` event lines in ComfyUI's order; an invalid workflow exits 2 with per-node errors, the same
from `validate` (also structured with `--json`), while every shipped workflow validates; a run-time error
exits 1 naming the node; bad `--set` arguments exit 2 with a clear message; `nodes --json` is ComfyUI's
object_info for all 15 node types; `--help` never imports torch or diffusers; a PNG written by SaveImage
runs as a workflow and reproduces the same file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CKPT = "sumi_tiny_sd15.safetensors"
SWEEP = ["run", "workflows/txt2img.json", "--set", "KSampler.seed=1,2", "--set", "5.width=64", "--set",
         "5.height=64", "--set", "KSampler.steps=2"]
NODE_TYPES = {"CheckpointLoaderSimple", "CLIPTextEncode", "CLIPSetLastLayer", "KSampler", "KSamplerAdvanced",
              "EmptyLatentImage", "LatentUpscale", "LatentUpscaleBy", "SaveLatent", "LoadLatent", "VAEDecode",
              "VAEEncode", "LoadImage", "SaveImage", "PreviewImage"}
# model families, conditioning and custom sampling (issue 9)
NODE_TYPES |= {"CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner", "ModelSamplingDiscrete", "ConditioningCombine",
               "ConditioningAverage", "ConditioningConcat", "ConditioningSetArea", "ConditioningSetAreaPercentage",
               "ConditioningSetMask", "ConditioningZeroOut", "ConditioningSetTimestepRange", "SamplerCustom",
               "SamplerCustomAdvanced", "KSamplerSelect", "BasicScheduler", "KarrasScheduler", "ExponentialScheduler",
               "SDTurboScheduler", "SplitSigmas", "RandomNoise", "DisableNoise", "CFGGuider", "BasicGuider",
               "LoraLoader", "LoraLoaderModelOnly", "UNETLoader", "CLIPLoader", "DualCLIPLoader", "VAELoader",
               "ControlNetLoader", "ControlNetApplyAdvanced", "ControlNetApply", "VAEEncodeForInpaint",
               "InpaintModelConditioning"}
HEAVY = ("torch", "diffusers", "transformers", "safetensors", "numpy")


def make_base(root: Path, checkpoint: Path) -> Path:
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "checkpoints" / CKPT).symlink_to(checkpoint)
    return root


@pytest.fixture
def base(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    return make_base(tmp_path / "base", tiny_checkpoint)


def cli(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "main.py", *args, "--base-directory", str(base)]
    if args[0] == "run":
        command += ["--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def write_workflow(path: Path, prompt: dict[str, Any]) -> str:
    path.write_text(json.dumps(prompt))
    return str(path)


def txt2img() -> dict[str, Any]:
    return json.loads((REPO / "workflows" / "txt2img.json").read_text())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> tuple[Path, Any]:
    base = make_base(tmp_path_factory.mktemp("sweep"), tiny_checkpoint)
    return base, cli(base, *SWEEP)


# ---------------------------------------------------------------- run


def test_sweep_exits_0_and_prints_the_pngs_it_wrote(sweep: tuple[Path, Any]) -> None:
    base, proc = sweep
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.splitlines()
    expected = [base / "output" / "txt2img_00001_.png", base / "output" / "txt2img_00002_.png"]
    assert [Path(line).resolve() for line in printed] == [p.resolve() for p in expected]
    pixels = []
    for path in expected:
        with Image.open(path) as png:
            assert png.size == (64, 64)
            pixels.append(png.tobytes())
    assert pixels[0] != pixels[1]  # seeds 1 and 2
    assert "ran 7 node(s), 0 cached" in proc.stderr and "ran 3 node(s), 4 cached" in proc.stderr


def test_json_events_are_comfyui_shaped_and_the_loader_runs_once(base: Path) -> None:
    proc = cli(base, *SWEEP, "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events and all(isinstance(e, dict) and set(e) == {"type", "data"} for e in events)

    runs: list[list[dict[str, Any]]] = []
    for event in events:
        if event["type"] == "execution_start":
            runs.append([])
        runs[-1].append(event)
    assert len(runs) == 2
    codes = {"execution_start": "S", "execution_cached": "C", "executing": "E", "progress": "P",
             "progress_state": "T", "executed": "X", "execution_success": "K"}
    # Per node: progress_state running, executing, (progress_state + progress) per step, [executed],
    # progress_state finished. Run 1 runs 4 5 6 7 3 8 9; run 2 finds 4-7 cached.
    sampler, decode, save = "TE" + "TP" * 2 + "T", "TET", "TEXT"
    expected = ["SC" + "TET" * 4 + sampler + decode + save + "KE", "SC" + sampler + decode + save + "KE"]
    for run, cached, pattern in zip(runs, ([], ["4", "5", "6", "7"]), expected, strict=True):
        assert "".join(codes.get(e["type"], "?") for e in run) == pattern
        assert [e["data"]["node"] for e in run if e["type"] == "executing"] == \
            ["4", "5", "6", "7", "3", "8", "9", None][len(cached):]
        states = [e["data"]["nodes"] for e in run if e["type"] == "progress_state"]
        assert all(node["prompt_id"] == run[0]["data"]["prompt_id"] and node["node_id"] == nid
                   for nodes in states for nid, node in nodes.items())
        sampler_states = [(n["3"]["state"], n["3"]["value"], n["3"]["max"]) for n in states if "3" in n]
        assert sampler_states[:4] == [("running", 0.0, 1.0), ("running", 1, 2), ("running", 2, 2),
                                      ("finished", 2, 2)]
        assert set(sampler_states[4:]) == {("finished", 2, 2)}  # later messages still carry it, finished
        assert {nid: n["state"] for nid, n in states[-1].items()} == \
            dict.fromkeys(["4", "5", "6", "7", "3", "8", "9"][len(cached):], "finished")
        assert run[1]["data"]["nodes"] == cached
        assert run[-1]["data"]["node"] is None
        assert len({e["data"]["prompt_id"] for e in run}) == 1
        current = None
        for event in run[2:-1]:
            if event["type"] == "executing":
                current = event["data"]["node"]
            elif event["type"] == "progress":
                assert event["data"]["node"] == current == "3" and event["data"]["max"] == 2
        [executed] = [e for e in run if e["type"] == "executed"]
        assert executed["data"]["node"] == "9"
        assert (base / "output" / executed["data"]["output"]["images"][0]["filename"]).is_file()
    assert runs[0][0]["data"]["prompt_id"] != runs[1][0]["data"]["prompt_id"]
    counts = Counter(e["data"]["node"] for e in events if e["type"] == "executing" and e["data"]["node"])
    assert counts == {"4": 1, "5": 1, "6": 1, "7": 1, "3": 2, "8": 2, "9": 2}


def test_png_from_save_image_runs_as_a_workflow_and_reproduces_the_file(sweep: tuple[Path, Any],
                                                                         base: Path) -> None:
    sweep_base, proc = sweep
    assert proc.returncode == 0, proc.stderr
    original = sweep_base / "output" / "txt2img_00001_.png"
    with Image.open(original) as png:
        saved = json.loads(png.text["prompt"])
    assert saved["3"]["inputs"]["seed"] == 1 and saved["5"]["inputs"]["width"] == 64
    rerun = cli(base, "run", str(original))
    assert rerun.returncode == 0, rerun.stderr
    [printed] = rerun.stdout.splitlines()
    assert Path(printed).resolve() == (base / "output" / "txt2img_00001_.png").resolve()
    assert Path(printed).read_bytes() == original.read_bytes()


def test_runtime_error_exits_1_naming_the_node(base: Path) -> None:
    proc = cli(base, "run", "workflows/txt2img.json", "--set", "Save Image.filename_prefix=../escape",
               "--set", "5.width=64", "--set", "5.height=64", "--set", "KSampler.steps=1")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert "error in node 9 (SaveImage)" in proc.stderr and "refused path" in proc.stderr
    assert not list(base.parent.rglob("escape*"))


# ---------------------------------------------------------------- validation


def invalid_workflow() -> dict[str, Any]:
    prompt = txt2img()
    prompt["3"]["inputs"]["steps"] = 0
    prompt["3"]["inputs"]["sampler_name"] = "eulr"
    prompt["7"]["inputs"]["clip"] = ["99", 1]
    return prompt


def test_invalid_workflow_exits_2_with_the_same_errors_from_run_and_validate(base: Path, tmp_path: Path) -> None:
    workflow = write_workflow(tmp_path / "bad.json", invalid_workflow())
    ran = cli(base, "run", workflow)
    checked = cli(base, "validate", workflow)
    assert ran.returncode == checked.returncode == 2
    assert ran.stdout == checked.stdout == ""
    assert ran.stderr == checked.stderr
    lines = ran.stderr.splitlines()
    assert lines[0] == "invalid workflow: 3 error(s)"
    heads = [line.strip() for line in lines if line.startswith("  node ")]
    assert len(heads) == 3
    assert any(h.startswith("node 3 (KSampler):") and "[input 'steps']" in h for h in heads)
    assert any(h.startswith("node 3 (KSampler):") and "[input 'sampler_name']" in h for h in heads)
    assert any(h.startswith("node 7 (CLIPTextEncode):") and "[input 'clip']" in h for h in heads)
    assert "'euler'" in ran.stderr  # the hint of the misspelt sampler
    assert not (base / "output").exists()


def test_validate_json_gives_structured_records(base: Path, tmp_path: Path) -> None:
    proc = cli(base, "validate", write_workflow(tmp_path / "bad.json", invalid_workflow()), "--json")
    assert proc.returncode == 2
    [line] = proc.stdout.splitlines()
    report = json.loads(line)
    assert report["type"] == "validation_error"
    records = {(e["node_id"], e["input_name"]): e for e in report["data"]["errors"]}
    assert set(records) == {("3", "steps"), ("3", "sampler_name"), ("7", "clip")}
    for record in records.values():
        assert {"type", "node_id", "input_name", "expected", "received"} <= set(record)
    steps = records["3", "steps"]
    assert (steps["type"], steps["expected"], steps["received"]) == ("value_smaller_than_min", ">= 1", 0)
    name = records["3", "sampler_name"]
    assert name["type"] == "value_not_in_list" and name["received"] == "eulr" and "euler" in name["expected"]
    clip = records["7", "clip"]
    assert clip["type"] == "dangling_link" and clip["received"] == "99"
    assert set(report["data"]["node_errors"]) == {"3", "7"}


@pytest.mark.parametrize("workflow", sorted(p.name for p in (REPO / "workflows").glob("*.json")))
def test_every_shipped_workflow_validates(base: Path, workflow: str) -> None:
    proc = cli(base, "validate", f"workflows/{workflow}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"workflows/{workflow}: valid"


@pytest.mark.parametrize(("setting", "message"), [
    ("Nope.seed=1", "--set: no node with id, title or class_type 'Nope'"),
    ("KSampler.sed=1", "KSampler has no input 'sed'"),
    ("CLIPTextEncode.text=a cat", "--set: 'CLIPTextEncode' names 2 nodes (6, 7); use a node id"),
    ("KSampler.seed", "expected NODE.INPUT=VALUE"),
])
def test_set_errors_exit_2_with_a_clear_message(base: Path, setting: str, message: str) -> None:
    proc = cli(base, "run", "workflows/txt2img.json", "--set", setting)
    assert proc.returncode == 2
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("error: ") and message in line
    assert not (base / "output").exists()


# ---------------------------------------------------------------- nodes and help


def test_nodes_json_is_object_info_for_every_node_type(base: Path) -> None:
    proc = cli(base, "nodes", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert set(info) == NODE_TYPES
    for name, entry in info.items():
        assert entry["name"] == name
        assert isinstance(entry["display_name"], str) and entry["display_name"]
        assert isinstance(entry["category"], str) and entry["category"]
        assert isinstance(entry["output_node"], bool)
        assert entry["input_order"]["required"] == list(entry["input"]["required"])
        assert isinstance(entry["output"], list) and len(entry["output_name"]) == len(entry["output"])
    ksampler = info["KSampler"]
    assert ksampler["input_order"]["required"] == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                                   "positive", "negative", "latent_image", "denoise"]
    samplers = ksampler["input"]["required"]["sampler_name"][0]
    assert samplers[:3] == ["euler", "euler_ancestral", "heun"] and "dpmpp_2m" in samplers
    assert ksampler["input"]["required"]["seed"] == ["INT", {
        "default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True,
        "tooltip": ksampler["input"]["required"]["seed"][1]["tooltip"]}]
    assert ksampler["output"] == ["LATENT"] and ksampler["output_node"] is False
    loader = info["CheckpointLoaderSimple"]
    tiny = [CKPT, "sumi_tiny_sd2.safetensors", "sumi_tiny_sdxl.safetensors", "sumi_tiny_sdxl_refiner.safetensors",
            "sumi_tiny_sd15_inpainting.safetensors"]
    assert loader["input"]["required"]["ckpt_name"][0] == sorted(tiny)
    assert loader["output"] == ["MODEL", "CLIP", "VAE"] and loader["display_name"] == "Load Checkpoint"
    assert info["SaveImage"]["output_node"] is True and info["SaveImage"]["output"] == []
    assert info["SaveImage"]["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["validate", "--help"]])
def test_help_works_without_importing_torch_or_diffusers(tmp_path: Path, args: list[str]) -> None:
    env = {**os.environ, "SUMI_BASE_DIR": str(tmp_path)}  # were folders touched, they would be these
    proc = subprocess.run([sys.executable, "-X", "importtime", "main.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: main.py")
    for word in (["run", "validate", "nodes"] if args == ["--help"] else ["--base-directory", "--json"]):
        assert word in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "argparse" in imported  # the import log is really there
    assert not {m for m in imported if m.split(".")[0] in HEAVY}
    assert not list(tmp_path.iterdir())  # no folders set up, no example inputs copied


def test_build_parser_imports_nothing_heavy() -> None:
    script = ("import json, sys, main; p = main.build_parser(); p.parse_args(['run', 'x.json', '--set', 'a.b=1']); "
              f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
