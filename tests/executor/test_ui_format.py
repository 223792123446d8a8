"""The editor's graph format converts to API format with the node schemas: widget order, the seed's
control value, converted widgets, reroutes, primitives, muted and bypassed nodes, both link schemas."""
from __future__ import annotations

from typing import Any

from executor.schema import Input, Node, Output, Registry
from executor.ui_format import is_ui_format, ui_to_api


class Src(Node):
    type = "Src"
    inputs = (Input("seed", "INT", default=0, extra={"control_after_generate": True}), Input("scale", "FLOAT"),
              Input("name", "COMBO", options=["a", "b"]))
    outputs = (Output("IMG"),)


class Filt(Node):
    type = "Filt"
    inputs = (Input("img", "IMG"), Input("strength", "FLOAT", default=1.0))
    outputs = (Output("IMG"),)


class Sink(Node):
    type = "Sink"
    output_node = True
    inputs = (Input("img", "IMG"), Input("prefix", "STRING", default="x"))


REG = Registry()
REG.register(Src, Filt, Sink)


def node(nid: int, kind: str, widgets: Any, inputs: list[dict[str, Any]] = (), mode: int = 0,
         title: str | None = None) -> dict[str, Any]:
    return {"id": nid, "type": kind, "mode": mode, "inputs": list(inputs), "outputs": [],
            "widgets_values": widgets, **({"title": title} if title else {})}


def graph(links: list[Any], *, filt_mode: int = 0) -> dict[str, Any]:
    return {
        "version": 0.4, "last_node_id": 9, "last_link_id": 9,
        "nodes": [
            node(1, "Src", [42, "randomize", 0.5, "b"], [{"name": "scale", "type": "FLOAT", "link": 5,
                                                          "widget": {"name": "scale"}}], title="Source"),
            node(2, "Filt", [0.25], [{"name": "img", "type": "IMG", "link": 1}], mode=filt_mode),
            node(3, "Reroute", [], [{"name": "", "type": "*", "link": 2}]),
            node(4, "Sink", ["out"], [{"name": "img", "type": "IMG", "link": 3}]),
            node(5, "PrimitiveNode", [0.5], []),
            node(6, "Sink", ["muted"], [{"name": "img", "type": "IMG", "link": 4}], mode=2),
            node(7, "Note", ["a note"], []),
        ],
        "links": links,
    }


LINKS_04 = [[1, 1, 0, 2, 0, "IMG"], [2, 2, 0, 3, 0, "IMG"], [3, 3, 0, 4, 0, "IMG"], [4, 1, 0, 6, 0, "IMG"],
            [5, 5, 0, 1, 1, "FLOAT"]]


def test_converts_widgets_links_and_frontend_only_nodes() -> None:
    data = graph(LINKS_04)
    assert is_ui_format(data)
    api, errors = ui_to_api(data, REG)
    assert errors == []
    assert api == {
        "1": {"class_type": "Src", "inputs": {"seed": 42, "scale": 0.5, "name": "b"}, "_meta": {"title": "Source"}},
        "2": {"class_type": "Filt", "inputs": {"strength": 0.25, "img": ["1", 0]}, "_meta": {"title": "Filt"}},
        "4": {"class_type": "Sink", "inputs": {"prefix": "out", "img": ["2", 0]}, "_meta": {"title": "Sink"}},
    }


def test_schema_1_object_links_give_the_same_prompt() -> None:
    objects = [{"id": a, "origin_id": b, "origin_slot": c, "target_id": d, "target_slot": e, "type": t}
               for a, b, c, d, e, t in LINKS_04]
    assert ui_to_api(graph(objects), REG) == ui_to_api(graph(LINKS_04), REG)


def test_bypassed_node_routes_its_same_typed_input_through() -> None:
    api, _ = ui_to_api(graph(LINKS_04, filt_mode=4), REG)
    assert "2" not in api
    assert api["4"]["inputs"]["img"] == ["1", 0]


def test_unknown_types_are_kept_for_validation_to_report() -> None:
    data = graph(LINKS_04)
    data["nodes"].append(node(8, "Mystery", [1]))
    api, _ = ui_to_api(data, REG)
    assert api["8"]["class_type"] == "Mystery"


def test_editor_save_of_the_default_workflow_converts_to_the_shipped_api_workflow() -> None:
    """With Sumi's real node schemas: KSampler's seed control value skipped, widget order as the editor's."""
    import json
    from pathlib import Path

    from nodes import build_registry

    root = Path(__file__).resolve().parents[2]
    ui = json.loads((root / "tests" / "fixtures" / "txt2img_ui.json").read_text())
    api, errors = ui_to_api(ui, build_registry())
    expected = json.loads((root / "workflows" / "txt2img.json").read_text())
    assert errors == []
    assert {k: v["inputs"] for k, v in api.items()} == {k: v["inputs"] for k, v in expected.items()}


def test_api_to_ui_round_trips_and_lays_out_by_depth() -> None:
    from executor.ui_format import api_to_ui

    prompt = {"1": {"class_type": "Src", "inputs": {"seed": 7, "scale": 0.5, "name": "b"}, "_meta": {"title": "S"}},
              "2": {"class_type": "Filt", "inputs": {"img": ["1", 0], "strength": ["5", 0]}},
              "3": {"class_type": "Sink", "inputs": {"img": ["2", 0], "prefix": "out"}},
              "5": {"class_type": "Src", "inputs": {"seed": 1, "scale": 2.0, "name": "a"}},
              "x": {"class_type": "Mystery", "inputs": {"img": ["3", 0], "k": 3}}}
    ui = api_to_ui(prompt, REG)
    assert is_ui_format(ui) and ui["version"] == 0.4
    by_id = {n["id"]: n for n in ui["nodes"]}
    assert sorted(by_id) == [1, 2, 3, 5, 6] and ui["last_node_id"] == 6  # "x" gets the next free id
    assert by_id[1]["widgets_values"] == [7, "fixed", 0.5, "b"] and by_id[1]["title"] == "S"
    # A widget fed by a link is an input slot that names its widget, and keeps its default as a value.
    assert by_id[2]["widgets_values"] == [1.0]
    assert by_id[2]["inputs"] == [{"name": "img", "type": "IMG", "link": 1},
                                  {"name": "strength", "type": "FLOAT", "link": 2, "widget": {"name": "strength"}}]
    assert ui["links"][0] == [1, 1, 0, 2, 0, "IMG"]
    assert by_id[1]["outputs"][0]["links"] == [1]
    x = [by_id[n]["pos"][0] for n in (1, 5, 2, 3, 6)]
    assert x[0] == x[1] < x[2] < x[3] < x[4]  # one column per dependency depth, left to right
    assert by_id[1]["pos"][1] < by_id[5]["pos"][1]  # stacked, not on top of each other
    back, errors = ui_to_api(ui, REG)
    assert errors == []
    assert back["1"] == prompt["1"] and back["2"]["inputs"] == prompt["2"]["inputs"]
    assert back["3"]["inputs"] == prompt["3"]["inputs"] and back["5"]["inputs"] == prompt["5"]["inputs"]
    assert back["6"]["class_type"] == "Mystery"  # unknown types survive for validation to name


def test_shipped_workflows_round_trip_through_the_editor_format() -> None:
    import json
    from pathlib import Path

    from executor.ui_format import api_to_ui
    from nodes import build_registry

    registry = build_registry()
    checked = 0
    for path in sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json")):
        prompt = json.loads(path.read_text())
        if is_ui_format(prompt):
            continue  # shipped in the editor format already (subgraphs, manifests): nothing to invert
        checked += 1
        back, errors = ui_to_api(api_to_ui(prompt, registry), registry)
        assert errors == [] and back == prompt, path.name
    assert checked >= 4
