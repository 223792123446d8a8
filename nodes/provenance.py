"""What made an output: recorded in every PNG Sumi writes (its `sumi` chunk) and compared by `run --verify`.

The record: Sumi's format and program versions, the model files (ComfyUI's `models` entries, with sha256), each
node type's version, torch's version, the device and what does its arithmetic (the GPU's name, or the CPU vector
unit torch's kernels use: float rounding differs between AVX2 and AVX-512 CPUs, so a re-run on another machine may
differ in the last bits), and the precision setting with the dtypes it chose.
"""
from __future__ import annotations

import importlib
import tomllib
from functools import cache
from typing import Any

from . import devices, manifest, paths

FORMAT_VERSION = 1  # of Sumi's saved files: PNG `sumi` chunk, `extra.sumi` in editor graphs (see nodes/formats.py)


@cache
def sumi_version() -> str:
    with open(paths.REPO_ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def node_versions(prompt: dict[str, Any]) -> dict[str, int]:
    """class_type → version of the node types a prompt uses (as the node classes declare them)."""
    from . import NODE_MODULES

    classes = {}
    for module in NODE_MODULES:
        try:
            classes.update({cls.type: cls for cls in importlib.import_module(module).NODES})
        except Exception:  # reported by the registry
            continue
    used = sorted({str(n.get("class_type")) for n in prompt.values() if isinstance(n, dict)})
    return {t: getattr(classes[t], "version", 1) for t in used if t in classes}


def processor(device: Any) -> str:
    """What runs the arithmetic on `device`: "cpu AVX2", "cpu AVX512", or the GPU's name."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu {torch.backends.cpu.get_cpu_capability()}"
    return device.type


def environment() -> dict[str, Any]:
    import torch

    policy = devices.POLICY
    return {"device": str(policy.device), "processor": processor(policy.device), "torch": torch.__version__,
            "precision": {"setting": policy.precision, "unet": str(policy.unet_dtype()).removeprefix("torch."),
                          "text_encoder": str(policy.text_dtype()).removeprefix("torch."),
                          "vae": str(policy.vae_dtype()).removeprefix("torch.")}}


def record(prompt: dict[str, Any], known_models: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The provenance of outputs made by this prompt in this process."""
    return {"format_version": FORMAT_VERSION, "sumi_version": sumi_version(),
            "models": manifest.manifest(prompt, known_models), "node_versions": node_versions(prompt),
            **environment()}


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two records, most likely causes first."""
    out = []
    before = {(m.get("directory"), m.get("name")): m.get("hash") for m in recorded.get("models") or []}
    now = {(m.get("directory"), m.get("name")): m.get("hash") for m in current.get("models") or []}
    for key in sorted(set(before) | set(now), key=str):
        if before.get(key) != now.get(key):
            out.append(f"model {key[0]}/{key[1]}: recorded sha256 {before.get(key) or 'none'}, "
                       f"now {now.get(key) or 'absent'}")
    if recorded.get("precision") != current.get("precision"):
        out.append(f"precision: recorded {_precision(recorded)}, now {_precision(current)}")
    for field in ("device", "processor", "sumi_version", "torch"):
        if field == "processor" and field not in recorded:  # older records kept none: unknown, not a difference
            continue
        if recorded.get(field) != current.get(field):
            out.append(f"{field.replace('_', ' ')}: recorded {recorded.get(field)}, now {current.get(field)}")
    old, new = recorded.get("node_versions") or {}, current.get("node_versions") or {}
    for node_type in sorted(set(old) | set(new)):
        if old.get(node_type) != new.get(node_type):
            out.append(f"node {node_type}: recorded version {old.get(node_type)}, now {new.get(node_type)}")
    return out


def _precision(rec: dict[str, Any]) -> str:
    p = rec.get("precision") or {}
    return f"{p.get('setting')} (unet {p.get('unet')}, text encoder {p.get('text_encoder')}, vae {p.get('vae')})"
