"""Format versions: Sumi stamps what it saves; unstamped files are version 0 and migrate; each migration runs
once, in order; a file from a newer Sumi is refused clearly. The v0 fixture was written by the Sumi before
format versions existed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from nodes import formats

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "formats"


def test_stamps_both_kinds_of_document_without_touching_the_original() -> None:
    graph = {"nodes": [], "links": [], "extra": {"ds": {"scale": 1}}}
    stamped = formats.stamp(graph)
    assert stamped["extra"] == {"ds": {"scale": 1}, "sumi": {"format_version": formats.FORMAT_VERSION}}
    assert graph == {"nodes": [], "links": [], "extra": {"ds": {"scale": 1}}}
    assert formats.stamp({"prompt": {}})["sumi"] == {"format_version": formats.FORMAT_VERSION}
    assert formats.version_of(stamped) == formats.FORMAT_VERSION and formats.version_of(graph) == 0


def test_the_v0_png_written_by_the_earlier_sumi_migrates() -> None:
    with Image.open(FIXTURES / "v0_txt2img.png") as img:
        assert set(img.text) == {"prompt", "workflow"}  # truly a version 0 file
        graph = json.loads(img.text["workflow"])
    assert formats.version_of(graph) == 0
    migrated = formats.migrate(graph)
    assert formats.version_of(migrated) == 1
    assert migrated["nodes"] == graph["nodes"] and "sumi" not in (graph.get("extra") or {})


def test_migrations_run_in_order_from_the_file_version(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def v1_to_v2(data: dict) -> dict:
        calls.append(1)
        return {**data, "renamed": data.pop("old", None)}

    monkeypatch.setattr(formats, "FORMAT_VERSION", 2)
    monkeypatch.setitem(formats.MIGRATIONS, 1, v1_to_v2)
    monkeypatch.setitem(formats.MIGRATIONS, 0, lambda d: (calls.append(0), d)[1])
    out = formats.migrate({"prompt": {}, "old": 5})
    assert calls == [0, 1] and out["renamed"] == 5 and formats.version_of(out) == 2
    calls.clear()
    assert formats.migrate(out) is out and calls == []  # current files are left alone


def test_a_file_from_a_newer_sumi_is_refused_clearly() -> None:
    with pytest.raises(formats.NewerFormat, match="format version 99; this Sumi reads up to 1: update Sumi"):
        formats.migrate({"prompt": {}, "sumi": {"format_version": 99}})
