"""`main.py` as a user runs it, in subprocesses, on the tiny checkpoint in a temporary base directory.

Proves: a `--set` sweep exits 0, prints the PNG paths it wrote and loads the model once; `--json` prints
only `{type, data}` event lines in ComfyUI's order; an invalid workflow exits 2 with per-node errors, the same
from `validate` (also structured with `--json`), while every shipped workflow validates; a run-time error
exits 1 naming the node; bad `--set` arguments exit 2 with a clear message; `nodes --json` is ComfyUI's
object_info for all 15 node types; `--help` never imports torch or diffusers; a PNG written by SaveImage
runs as a workflow and reproduces the same file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CKPT = "sumi_tiny_sd15.safetensors"
SWEEP = ["run", "workflows/txt2img.json", "--set", "KSampler.seed=1,2", "--set", "5.width=64", "--set",
         "5.height=64", "--set", "KSampler.steps=2"]
NODE_TYPES = {"CheckpointLoaderSimple", "CLIPTextEncode", "CLIPSetLastLayer", "KSampler", "KSamplerAdvanced",
              "EmptyLatentImage", "LatentUpscale", "LatentUpscaleBy", "SaveLatent", "LoadLatent", "VAEDecode",
              "VAEEncode", "LoadImage", "SaveImage", "SaveImageWebsocket", "PreviewImage"}
TOOL_NODE_TYPES = {"VAEEncodeForInpaint", "LatentComposite", "LatentCompositeMasked", "RepeatLatentBatch",
                   "LatentFromBatch", "LatentBlend", "SetLatentNoiseMask", "ImageInvert", "ImageCrop", "ImageBatch",
                   "ImageBlend", "ImageCompositeMasked", "EmptyImage", "GetImageSize", "ImageScale", "ImageScaleBy",
                   "ImageScaleToTotalPixels", "ImagePadForOutpaint", "Canny", "ImageToMask", "MaskToImage",
                   "InvertMask", "GrowMask", "FeatherMask", "SolidMask", "ThresholdMask", "MaskComposite",
                   "MaskPreview", "LoadImageMask", "PrimitiveInt", "PrimitiveFloat", "PrimitiveString",
                   "PrimitiveStringMultiline", "PrimitiveBoolean"}
# model families, conditioning and custom sampling (issue 9)
NODE_TYPES |= {"CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner", "ModelSamplingDiscrete", "ConditioningCombine",
               "ConditioningAverage", "ConditioningConcat", "ConditioningSetArea", "ConditioningSetAreaPercentage",
               "ConditioningSetMask", "ConditioningZeroOut", "ConditioningSetTimestepRange", "SamplerCustom",
               "SamplerCustomAdvanced", "KSamplerSelect", "BasicScheduler", "KarrasScheduler", "ExponentialScheduler",
               "SDTurboScheduler", "SplitSigmas", "RandomNoise", "DisableNoise", "CFGGuider", "BasicGuider",
               "LoraLoader", "LoraLoaderModelOnly", "UNETLoader", "CLIPLoader", "DualCLIPLoader", "VAELoader",
               "ControlNetLoader", "ControlNetApplyAdvanced", "ControlNetApply", "VAEEncodeForInpaint",
               "InpaintModelConditioning", "UpscaleModelLoader", "ImageUpscaleWithModel"}
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
    # the node types, and the shipped component at its latest and pinned version
    assert set(info) == NODE_TYPES | TOOL_NODE_TYPES | {"component/txt2img_tiny", "component/txt2img_tiny@1"}
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


def test_subgraph_workflow_runs_to_the_flat_pixels_and_errors_name_the_inner_node(base: Path, tmp_path: Path) -> None:
    """ComfyUI's front end's save of txt2img with three nested subgraphs (seed promoted to the outermost and set
    to 7) gives the flat workflow's pixels; a bad value inside names the node by its path."""
    fixture = json.loads((REPO / "tests" / "fixtures" / "subgraphs" / "frontend_nested3.json").read_text())
    flat = txt2img()
    flat["3"]["inputs"].update(seed=7, steps=3)
    flat["5"]["inputs"].update(width=64, height=64)
    images = []
    for name, workflow in (("flat", flat), ("nested", fixture["workflow"])):
        proc = cli(base, "run", write_workflow(tmp_path / f"{name}.json", workflow))
        assert proc.returncode == 0, proc.stderr
        with Image.open(proc.stdout.split()[0]) as img:
            images.append(img.tobytes())
            if name == "nested":  # the editor graph comes back in the PNG with its model manifest
                (model,) = json.loads(img.text["workflow"])["models"]
                assert (model["name"], model["directory"], model["hash_type"]) == (CKPT, "checkpoints", "sha256")
                assert len(model["hash"]) == 64
    assert images[0] == images[1]
    broken = json.loads(json.dumps(fixture["workflow"]))
    sampler_graph = next(g for g in broken["definitions"]["subgraphs"] if any(n["type"] == "KSampler"
                                                                              for n in g["nodes"]))
    sampler = next(n for n in sampler_graph["nodes"] if n["type"] == "KSampler")
    sampler["widgets_values"][2] = 0  # steps below the minimum of 1
    proc = cli(base, "validate", write_workflow(tmp_path / "broken.json", broken), "--json")
    assert proc.returncode == 2
    (error,) = json.loads(proc.stdout)["data"]["errors"]
    assert (error["node_id"], error["class_type"], error["input_name"], error["path"]) == (
        "12:11:3", "KSampler", "steps", ["12", "11", "3"])


def small_workflow(ckpt: str) -> dict[str, Any]:
    prompt = txt2img()
    prompt["3"]["inputs"].update(steps=2)
    prompt["5"]["inputs"].update(width=64, height=64)
    prompt["4"]["inputs"]["ckpt_name"] = ckpt
    return prompt


def base_with(root: Path, checkpoint: Path, name: str | None) -> Path:
    (root / "models" / "checkpoints").mkdir(parents=True)
    if name:
        shutil.copy2(checkpoint, root / "models" / "checkpoints" / name)  # a copy: its own path and index entry
    return root


def test_a_saved_workflow_finds_its_renamed_model_by_hash_and_reports_an_absent_one(
        tmp_path: Path, tiny_checkpoint: Path) -> None:
    """Saved on one Sumi (base A), opened on another with the model renamed (B): it runs, to the same pixels.
    With the model absent (C): one report with the hash and the folders searched, exit 2, nothing run."""
    digest = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    a = base_with(tmp_path / "a", tiny_checkpoint, "mine.safetensors")
    proc = cli(a, "run", write_workflow(tmp_path / "wf.json", small_workflow("mine.safetensors")),
               "--save-workflow", str(tmp_path / "shared.json"))
    assert proc.returncode == 0, proc.stderr
    shared = json.loads((tmp_path / "shared.json").read_text())
    assert shared["models"] == [{"name": "mine.safetensors", "directory": "checkpoints", "hash": digest,
                                 "hash_type": "sha256"}]
    assert shared["sumi"] == {"format_version": 1}
    with Image.open(proc.stdout.split()[0]) as img:
        original = img.tobytes()

    b = base_with(tmp_path / "b", tiny_checkpoint, "renamed.safetensors")
    proc = cli(b, "run", str(tmp_path / "shared.json"))
    assert proc.returncode == 0, proc.stderr
    assert "model checkpoints/mine.safetensors found by its hash as renamed.safetensors" in proc.stderr
    with Image.open(proc.stdout.split()[0]) as img:
        assert img.tobytes() == original
    # A second open reads no model file: the index answers (its rows are not rewritten).
    db = b / "user" / "model_hashes.db"
    before = sqlite3.connect(db).execute("SELECT path, hashed_at FROM hashes").fetchall()
    assert len(before) == 1
    started = time.perf_counter()
    assert cli(b, "validate", str(tmp_path / "shared.json")).returncode == 0
    print(f"second open (validate, whole process): {time.perf_counter() - started:.2f}s")
    assert sqlite3.connect(db).execute("SELECT path, hashed_at FROM hashes").fetchall() == before

    c = base_with(tmp_path / "c", tiny_checkpoint, None)
    proc = cli(c, "run", str(tmp_path / "shared.json"), "--json")
    assert proc.returncode == 2
    (line,) = proc.stdout.splitlines()
    assert json.loads(line) == {"type": "missing_models", "data": {"models": [{
        "node_id": "4", "class_type": "CheckpointLoaderSimple", "input_name": "ckpt_name", "name": "mine.safetensors",
        "directory": "checkpoints", "expected_hash": digest, "url": None,
        "searched": [str((c / "models" / "checkpoints").resolve())]}]}}
    assert not (c / "output").exists() or not list((c / "output").iterdir())


def test_verify_says_identical_then_names_the_precision_and_the_model_file(tmp_path: Path,
                                                                           tiny_checkpoint: Path) -> None:
    from nodes.diffusion.fixtures import build_tiny_checkpoint

    base = base_with(tmp_path / "base", tiny_checkpoint, "mine.safetensors")
    proc = cli(base, "run", write_workflow(tmp_path / "wf.json", small_workflow("mine.safetensors")))
    assert proc.returncode == 0, proc.stderr
    png = proc.stdout.split()[0]
    with Image.open(png) as img:
        record = json.loads(img.text["sumi"])
    assert record["node"] == "9" and record["models"][0]["name"] == "mine.safetensors"
    assert record["precision"]["unet"] == "float32" and record["device"] == "cpu"
    import torch

    assert record["processor"] == f"cpu {torch.backends.cpu.get_cpu_capability()}"

    def verify(*extra: str) -> dict[str, Any]:
        proc = cli(base, "run", png, "--verify", "--json", *extra)
        report = json.loads(proc.stdout.splitlines()[-1])["data"]
        assert proc.returncode == (0 if report["identical"] else 1), proc.stderr
        return report

    same = verify()
    assert same["identical"] and same["environment_differences"] == []
    other_precision = verify("--precision", "bf16")
    assert not other_precision["identical"] and other_precision["differing_values"] > 0
    assert [d.split(":")[0] for d in other_precision["environment_differences"]] == ["precision"]
    build_tiny_checkpoint(base / "models" / "checkpoints" / "mine.safetensors", seed=1)
    other_model = verify()
    assert not other_model["identical"]
    (difference,) = other_model["environment_differences"]
    old = record["models"][0]["hash"]
    assert difference.startswith(f"model checkpoints/mine.safetensors: recorded sha256 {old}, now ")


def test_a_png_from_the_sumi_before_format_versions_still_runs(base: Path, tmp_path: Path) -> None:
    old = REPO / "tests" / "fixtures" / "formats" / "v0_txt2img.png"
    proc = cli(base, "run", str(old), "--save-workflow", str(tmp_path / "again.json"))
    assert proc.returncode == 0, proc.stderr
    with Image.open(proc.stdout.split()[0]) as new, Image.open(old) as before:
        # The same pixels as the old Sumi wrote, up to float rounding across CPUs: the fixture was made on an
        # AVX-512 machine, and on an AVX2 one 3 of its 3,072 values come out one level apart. Another seed,
        # prompt or sampler setting moves most of them by far more.
        diff = np.abs(np.asarray(new, dtype=np.int16) - np.asarray(before, dtype=np.int16))
        assert new.size == before.size and diff.max() <= 1 and np.count_nonzero(diff) <= 0.01 * diff.size
        assert json.loads(new.text["workflow"])["extra"]["sumi"] == {"format_version": 1}
        assert json.loads(new.text["sumi"])["format_version"] == 1
    assert json.loads((tmp_path / "again.json").read_text())["extra"]["sumi"] == {"format_version": 1}
    newer = json.loads((tmp_path / "again.json").read_text())
    newer["extra"]["sumi"]["format_version"] = 99
    proc = cli(base, "validate", write_workflow(tmp_path / "newer.json", newer))
    assert proc.returncode == 2 and "format version 99; this Sumi reads up to 1" in proc.stderr


def test_components_save_version_list_and_run_from_the_command_line(base: Path, tmp_path: Path) -> None:
    """A workflow saved as a component (v1); saving it unchanged keeps v1, a change makes v2; both run, the old
    one pinned as component/NAME@1, in a second workflow and as a function with --input; a bad --input value
    is a structured error naming the component input; the component is a node type in object_info."""
    wf = write_workflow(tmp_path / "wf.json", small_workflow(CKPT))
    save = ["components", "save", "tiny_gen", wf, "--input", "prompt=6.text", "--input", "seed=3.seed",
            "--output", "image=8"]
    proc = cli(base, *save)
    assert proc.returncode == 0, proc.stderr
    first = base.resolve() / "user" / "components" / "tiny_gen@1.json"
    assert proc.stdout.strip() == f"saved component/tiny_gen version 1: {first}"
    assert "unchanged, kept component/tiny_gen version 1" in cli(base, *save).stdout
    changed = small_workflow(CKPT)
    changed["3"]["inputs"]["steps"] = 3
    save[3] = write_workflow(tmp_path / "wf2.json", changed)
    assert "saved component/tiny_gen version 2" in cli(base, *save).stdout

    listed = json.loads(cli(base, "components", "list", "--json").stdout)["data"]
    mine = next(c for c in listed if c["type"] == "component/tiny_gen")
    assert (mine["version"], mine["inputs"], mine["outputs"]) == (2, ["prompt", "seed"], ["image"])
    info = json.loads(cli(base, "nodes", "--json").stdout)
    assert {"component/tiny_gen", "component/tiny_gen@1", "component/tiny_gen@2"} <= set(info)
    assert info["component/tiny_gen"]["input"]["optional"]["seed"][1]["default"] == 42

    as_function = cli(base, "run", "component/tiny_gen@1", "--input", "seed=5")
    assert as_function.returncode == 0, as_function.stderr
    second = write_workflow(tmp_path / "second.json", {
        "1": {"class_type": "component/tiny_gen@1", "inputs": {"seed": 5}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "second"}}})
    in_workflow = cli(base, "run", second)
    assert in_workflow.returncode == 0, in_workflow.stderr
    with Image.open(as_function.stdout.split()[0]) as a, Image.open(in_workflow.stdout.split()[0]) as b:
        assert a.tobytes() == b.tobytes()

    bad = cli(base, "run", "component/tiny_gen", "--input", "seed=-1", "--json")
    assert bad.returncode == 2
    (error,) = json.loads(bad.stdout)["data"]["errors"]
    assert (error["type"], error["node_id"], error["class_type"], error["input_name"]) == (
        "value_smaller_than_min", "1", "component/tiny_gen", "seed")
    unknown = cli(base, "run", "component/tiny_gen", "--input", "colour=red")
    assert unknown.returncode == 2 and "component/tiny_gen has the inputs prompt (STRING), seed (INT)" in unknown.stderr


def test_a_subgraph_becomes_a_component_that_gives_the_subgraph_pixels(base: Path, tmp_path: Path) -> None:
    """The outermost subgraph of the front end's nested txt2img save becomes component/decoder: its inputs
    (clip, model, vae and the promoted seed, declared like KSampler's seed) and its IMAGE output."""
    fixture = json.loads((REPO / "tests" / "fixtures" / "subgraphs" / "frontend_nested3.json").read_text())
    graph = write_workflow(tmp_path / "graph.json", fixture["workflow"])
    outer = next(g for g in fixture["workflow"]["definitions"]["subgraphs"]
                 if any(i["name"] == "vae" for i in g["inputs"]))
    proc = cli(base, "components", "save", "decoder", graph, "--subgraph", outer["id"][:8], "--json")
    assert proc.returncode == 0, proc.stderr
    saved = json.loads(Path(json.loads(proc.stdout)["data"]["file"]).read_text())
    assert [(i["name"], i["type"]) for i in saved["inputs"]] == [
        ("clip", "CLIP"), ("model", "MODEL"), ("vae", "VAE"), ("seed", "INT")]
    assert saved["inputs"][3]["default"] == 42 and saved["inputs"][3]["min"] == 0
    assert saved["outputs"] == [{"name": "IMAGE", "type": "IMAGE", "from": ["8", 0]}]
    use = write_workflow(tmp_path / "use.json", {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "1": {"class_type": "component/decoder", "inputs": {"clip": ["4", 1], "model": ["4", 0], "vae": ["4", 2],
                                                             "seed": 7}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "component"}}})
    images = []
    for workflow in (use, graph):
        proc = cli(base, "run", workflow)
        assert proc.returncode == 0, proc.stderr
        with Image.open(proc.stdout.split()[0]) as img:
            images.append(img.tobytes())
    assert images[0] == images[1]


def test_models_hash_fills_the_index_once(base: Path) -> None:
    first = cli(base, "models", "hash", "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)["data"]
    assert (data["files"], data["hashed"]) == (1, 1) and data["bytes"] > 1_000_000
    assert data["index"] == str(base.resolve() / "user" / "model_hashes.db")
    again = json.loads(cli(base, "models", "hash", "--json").stdout)["data"]
    assert (again["files"], again["hashed"], again["bytes"]) == (1, 0, 0)


def test_verify_names_another_processor_and_ignores_its_absence_in_older_records() -> None:
    """A PNG made on another machine re-runs within float rounding, not bit for bit: the processor is the cause
    --verify names. A record from before the field existed says nothing of it, which is not a difference."""
    from nodes import provenance

    now = provenance.environment()
    other = "cpu AVX2" if now["processor"] != "cpu AVX2" else "cpu AVX512"
    assert provenance.differences({**now, "processor": other}, now) == [
        f"processor: recorded {other}, now {now['processor']}"]
    older = {k: v for k, v in now.items() if k != "processor"}
    assert provenance.differences(older, now) == []
