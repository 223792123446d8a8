"""Subgraphs in the editor format: expanded into the colon-path ids ComfyUI's front end sends, resolved through
promoted widgets, muted and bypassed nodes and instance boundaries; the ids flow through validation, ordering,
events and errors; identical copies share cache entries.

`tests/fixtures/subgraphs/frontend_*.json` were exported from ComfyUI's own front end (1.58.1, in Chromium:
`graph.convertToSubgraph` on Sumi's txt2img graph, then `app.graphToPrompt()`), each holding the editor graph
and the API prompt the front end made from it. `hand_*.json` are hand-written edge cases; beside each,
`hand_*.frontend.json` is what the same front end made of it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from executor.errors import NodeError, ValidationFailed
from executor.runner import Executor
from executor.schema import Registry
from executor.ui_format import ui_to_api
from executor.validate import id_order
from executor.workflow import Link, parse_api
from tests.executor.toy_nodes import CALLS, toy_registry

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "subgraphs"


@pytest.fixture(scope="module")
def real_registry() -> Registry:
    from nodes import build_registry

    return build_registry()


def prompt_of(api: dict[str, Any]) -> dict[str, Any]:
    """What the executor reads: class_type and inputs (titles are display only)."""
    return {nid: (node["class_type"], node["inputs"]) for nid, node in api.items()}


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("frontend_*.json")))
def test_front_end_exports_convert_to_the_prompt_the_front_end_sent(name: str, real_registry: Registry) -> None:
    fixture = json.loads((FIXTURES / f"{name}.json").read_text())
    api, errors = ui_to_api(fixture["workflow"], real_registry)
    assert errors == []
    assert prompt_of(api) == prompt_of(fixture["output"])


def test_the_front_end_fixtures_cover_the_cases() -> None:
    """Nesting three deep with a promoted seed, a bypassed inner node, a link into a muted instance, an output
    used twice, two copies of one subgraph: the ids and values the front end sent."""
    def out(name: str) -> dict[str, Any]:
        return json.loads((FIXTURES / f"frontend_{name}.json").read_text())["output"]

    nested = out("nested3")
    assert nested["12:11:3"]["inputs"]["seed"] == 7  # promoted twice, set on the outermost instance
    assert nested["12:11:3"]["inputs"]["positive"] == ["12:11:10:6", 0]
    assert out("bypass_inside")["13:8"]["inputs"]["samples"] == ["13:3", 0]  # 13:12 bypassed
    assert "9" not in out("muted_link") and out("muted_link")["20"]["inputs"]["images"] == ["8", 0]
    twice = out("output_twice")
    assert twice["9"]["inputs"]["images"] == twice["20"]["inputs"]["images"] == ["21:8", 0]
    copies = out("two_copies")
    assert copies["10:6"]["inputs"] == copies["11:6"]["inputs"]


@pytest.mark.parametrize("name", ["hand_legacy_proxy_widgets", "hand_id_collision"])
def test_hand_written_cases_convert_as_the_front_end_does(name: str, real_registry: Registry) -> None:
    api, errors = ui_to_api(json.loads((FIXTURES / f"{name}.json").read_text()), real_registry)
    assert errors == []
    assert prompt_of(api) == prompt_of(json.loads((FIXTURES / f"{name}.frontend.json").read_text()))


def test_legacy_proxy_widget_value_and_renumbered_ids(real_registry: Registry) -> None:
    legacy, _ = ui_to_api(json.loads((FIXTURES / "hand_legacy_proxy_widgets.json").read_text()), real_registry)
    assert legacy["10:30"]["inputs"]["seed"] == 99  # the instance's value, not the inner widget's 42
    sent = json.loads((FIXTURES / "hand_id_collision.json").read_text())
    collide, _ = ui_to_api(sent, real_registry)
    assert sent == json.loads((FIXTURES / "hand_id_collision.json").read_text())  # the graph itself is untouched
    # inner 6 and 7 collide with root nodes 6 and 7: renumbered after last_node_id 12
    assert {"10:13", "10:14"} <= set(collide) and collide["10:14"]["inputs"]["samples"] == ["10:13", 0]


def test_a_muted_instance_nested_in_a_subgraph_keeps_its_nodes_out(real_registry: Registry) -> None:
    """Sumi applies an instance's mode at every depth; the front end only at the top level (it still sends the
    Save Image inside the muted nested instance). Everything else is the same."""
    api, errors = ui_to_api(json.loads((FIXTURES / "hand_nested_muted.json").read_text()), real_registry)
    front = prompt_of(json.loads((FIXTURES / "hand_nested_muted.frontend.json").read_text()))
    assert errors == [] and "20:41:40" in front
    del front["20:41:40"]
    assert prompt_of(api) == front


# -- toy nodes ------------------------------------------------------------------------------------------------

REG = toy_registry()
SG = "5ca1e000-0000-4000-8000-000000000001"
SG2 = "5ca1e000-0000-4000-8000-000000000002"


def node(nid: int, kind: str, widgets: Any = None, inputs: list[dict[str, Any]] = (), mode: int = 0,
         **extra: Any) -> dict[str, Any]:
    n = {"id": nid, "type": kind, "mode": mode, "inputs": list(inputs), "outputs": [], **extra}
    if widgets is not None:
        n["widgets_values"] = widgets
    return n


def slot(name: str, typ: str, link: int | None, widget: bool = False) -> dict[str, Any]:
    return {"name": name, "type": typ, "link": link, **({"widget": {"name": name}} if widget else {})}


def definition(sid: str, nodes: list[dict[str, Any]], links: list[tuple[Any, ...]],
               inputs: list[tuple[str, str, list[int]]], outputs: list[tuple[str, str, list[int]]]) -> dict[str, Any]:
    return {"id": sid, "name": f"sub {sid[-1]}", "version": 1, "revision": 0, "state": {},
            "inputNode": {"id": -10, "bounding": [0, 0, 1, 1]}, "outputNode": {"id": -20, "bounding": [0, 0, 1, 1]},
            "inputs": [{"id": f"i{k}", "name": n, "type": t, "linkIds": ids} for k, (n, t, ids) in enumerate(inputs)],
            "outputs": [{"id": f"o{k}", "name": n, "type": t, "linkIds": ids} for k, (n, t, ids) in enumerate(outputs)],
            "nodes": nodes, "links": [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"),
                                               link, strict=True)) for link in links]}


def scaler(sid: str = SG) -> dict[str, Any]:
    """x → Scale(x, factor) → out; `factor` promoted to a subgraph input."""
    return definition(sid, [node(5, "Scale", [3.0], [slot("x", "FLOAT", 1), slot("factor", "FLOAT", 3, True)])],
                      [(1, -10, 0, 5, 0, "FLOAT"), (3, -10, 1, 5, 1, "FLOAT"), (2, 5, 0, -20, 0, "FLOAT")],
                      [("x", "FLOAT", [1]), ("factor", "FLOAT", [3])], [("out", "FLOAT", [2])])


def workflow(nodes: list[dict[str, Any]], links: list[list[Any]], subs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": 0.4, "last_node_id": 20, "last_link_id": 20, "nodes": nodes, "links": links,
            "definitions": {"subgraphs": subs}}


def two_scalers(first_value: float = 4.0, second_value: float = 4.0, mode: int = 0) -> dict[str, Any]:
    """1 → instance 12 (factor promoted: 5) → Show 3.x; 2 → instance 13 (factor 5) → Show 3.y."""
    return workflow([
        node(1, "Num", [first_value]), node(2, "Num", [second_value]),
        node(12, SG, [5.0], [slot("x", "FLOAT", 1)], mode=mode), node(13, SG, [5.0], [slot("x", "FLOAT", 2)]),
        node(3, "Show", None, [slot("x", "FLOAT", 3), slot("y", "FLOAT", 4)]),
    ], [[1, 1, 0, 12, 0, "FLOAT"], [2, 2, 0, 13, 0, "FLOAT"], [3, 12, 0, 3, 0, "FLOAT"], [4, 13, 0, 3, 1, "FLOAT"]],
        [scaler()])


def test_promoted_widget_and_colon_ids() -> None:
    api, errors = ui_to_api(two_scalers(), REG)
    assert errors == []
    assert prompt_of(api) == {
        "1": ("Num", {"value": 4.0}), "2": ("Num", {"value": 4.0}),
        "12:5": ("Scale", {"x": ["1", 0], "factor": 5.0}), "13:5": ("Scale", {"x": ["2", 0], "factor": 5.0}),
        "3": ("Show", {"x": ["12:5", 0], "y": ["13:5", 0]}),
    }


def test_a_linked_subgraph_input_wins_over_its_promoted_value() -> None:
    data = two_scalers()
    data["nodes"][2]["inputs"].append(slot("factor", "FLOAT", 9))
    data["links"].append([9, 2, 0, 12, 1, "FLOAT"])
    api, _ = ui_to_api(data, REG)
    assert api["12:5"]["inputs"]["factor"] == ["2", 0]


def test_input_wired_straight_to_an_output_and_a_bypassed_instance() -> None:
    through = definition(SG2, [], [(1, -10, 0, -20, 0, "FLOAT")], [("x", "FLOAT", [1])], [("out", "FLOAT", [1])])
    data = workflow([node(1, "Num", [2.0]), node(12, SG2, None, [slot("x", "FLOAT", 1)]),
                     node(3, "Show", None, [slot("x", "FLOAT", 2)])],
                    [[1, 1, 0, 12, 0, "FLOAT"], [2, 12, 0, 3, 0, "FLOAT"]], [through])
    assert ui_to_api(data, REG)[0]["3"]["inputs"]["x"] == ["1", 0]
    bypassed, _ = ui_to_api(two_scalers(mode=4), REG)
    assert "12:5" not in bypassed and bypassed["3"]["inputs"]["x"] == ["1", 0]


def test_a_muted_instance_feeding_a_node_leaves_its_input_missing_and_validation_says_so() -> None:
    api, _ = ui_to_api(two_scalers(mode=2), REG)
    assert "12:5" not in api and "x" not in api["3"]["inputs"]
    with pytest.raises(ValidationFailed) as info:
        Executor(REG).prepare(api)
    assert [(e.type, e.node_id, e.input_name) for e in info.value.errors] == [("required_input_missing", "3", "x")]


def test_a_subgraph_containing_itself_is_a_structured_error() -> None:
    loop = definition(SG, [node(7, SG, None, [])], [], [], [])
    _, errors = ui_to_api(workflow([node(1, SG, None, [])], [], [loop]), REG)
    assert [(e.type, e.node_id) for e in errors] == [("invalid_prompt", "1:7")]
    assert "contains itself" in errors[0].message


def test_an_instance_whose_definition_is_missing_says_so() -> None:
    data = two_scalers()
    data["definitions"]["subgraphs"] = []
    _, errors = ui_to_api(data, REG)
    assert [(e.type, e.node_id, e.class_type) for e in errors] == [("invalid_prompt", "12", SG), ("invalid_prompt",
                                                                                                  "13", SG)]
    assert "definition is not in the workflow" in errors[0].message


def test_an_error_inside_a_subgraph_names_the_inner_node_and_its_path() -> None:
    data = two_scalers()
    data["nodes"][3]["widgets_values"] = [50.0]  # factor promoted on instance 13: above the max of 10
    api, _ = ui_to_api(data, REG)
    with pytest.raises(ValidationFailed) as info:
        Executor(REG).prepare(api)
    (err,) = info.value.errors
    assert (err.type, err.node_id, err.class_type, err.input_name, err.path) == (
        "value_bigger_than_max", "13:5", "Scale", "factor", ["13", "5"])
    assert "node 13:5 (Scale) inside subgraph 13" in err.render()
    assert info.value.by_node()["13:5"]["class_type"] == "Scale"
    assert NodeError("x", "m", "3").path == ["3"] and NodeError("x", "m").path is None


def test_colon_paths_order_segment_by_segment() -> None:
    ids = ["10", "3:10", "a", "3", "3:2", "11:10:3", "3:2:1", "2", "11:9"]
    assert sorted(ids, key=id_order) == ["2", "3", "3:2", "3:2:1", "3:10", "10", "11:9", "11:10:3", "a"]


def test_events_name_the_path() -> None:
    events: list[Any] = []
    api, _ = ui_to_api(two_scalers(second_value=1.0), REG)
    Executor(REG).run(api, prompt_id="p", on_event=events.append)
    executing = [e.data["node"] for e in events if e.type == "executing" and e.data["node"]]
    assert executing == ["1", "2", "12:5", "13:5", "3"]  # ordered by path
    last = [e for e in events if e.type == "progress_state"][-1].data["nodes"]
    assert last["12:5"]["display_node_id"] == "12:5" and last["12:5"]["parent_node_id"] == "12"
    assert last["1"]["parent_node_id"] is None


def test_a_second_copy_of_a_subgraph_is_served_from_the_first_copy() -> None:
    CALLS.clear()
    api, _ = ui_to_api(two_scalers(), REG)
    result = Executor(REG).run(api)
    assert result.status == "success" and result.outputs["3"] == {"text": ["(20.0, 20.0)"]}
    # Num 2 and Scale 13:5 have the signatures of Num 1 and Scale 12:5: node ids are not part of signatures.
    assert CALLS == ["1", "12:5", "3"] and set(result.cached) == {"2", "13:5"}


def test_literal_lists_travel_as_values_not_links() -> None:
    wf, errors = parse_api({"1": {"class_type": "Num", "inputs": {"value": {"__value__": ["1", 0]}}}})
    assert errors == [] and wf.nodes["1"].inputs["value"] == ["1", 0]
    assert not isinstance(wf.nodes["1"].inputs["value"], Link)
    assert wf.to_api()["1"]["inputs"]["value"] == {"__value__": ["1", 0]}
    with pytest.raises(ValidationFailed) as info:
        Executor(REG).prepare({"1": {"class_type": "Num", "inputs": {"value": {"__value__": [1, 2]}}},
                               "2": {"class_type": "Show", "inputs": {"x": ["1", 0]}}})
    assert [(e.type, e.node_id, e.input_name, e.received) for e in info.value.errors] == [
        ("invalid_input_type", "1", "value", [1, 2])]
