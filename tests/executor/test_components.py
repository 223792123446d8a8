"""Components: a prompt with declared inputs and outputs as one node type. Registered per version (the plain
name is the highest), in object_info, validated by their declarations (errors name the component input),
expanded into colon-path ids (nested components too), sharing cache entries between identical instances."""
from __future__ import annotations

from typing import Any

import pytest

from executor.components import ComponentError, ComponentSpec, register
from executor.errors import ValidationFailed
from executor.runner import Executor
from executor.schema import Registry
from tests.executor.toy_nodes import CALLS, toy_registry


def scaler(version: int = 1, offset: float = 0.0) -> dict[str, Any]:
    """x → Scale(x, factor) → Scale(·, 1) (+ an offset Num in v2 to change the body)."""
    body: dict[str, Any] = {"5": {"class_type": "Scale", "inputs": {"x": {"__input__": "x"},
                                                                   "factor": {"__input__": "factor"}}},
                            "6": {"class_type": "Scale", "inputs": {"x": ["5", 0], "factor": 1.0 + offset}}}
    return {"component": "scaler", "version": version, "description": "scales",
            "inputs": [{"name": "x", "type": "FLOAT"}, {"name": "factor", "type": "FLOAT", "default": 3.0,
                                                         "min": 0, "max": 5}],
            "outputs": [{"name": "scaled", "type": "FLOAT", "from": ["6", 0]}], "prompt": body}


@pytest.fixture
def reg() -> Registry:
    CALLS.clear()
    registry = toy_registry()
    assert register(registry, [ComponentSpec.from_document(scaler(1)),
                               ComponentSpec.from_document(scaler(2, offset=1.0))]) == []
    return registry


def use(kind: str = "component/scaler", **inputs: Any) -> dict[str, Any]:
    return {"1": {"class_type": "Num", "inputs": {"value": 2.0}},
            "2": {"class_type": kind, "inputs": {"x": ["1", 0], **inputs}},
            "3": {"class_type": "Show", "inputs": {"x": ["2", 0]}}}


def test_runs_expanded_under_colon_ids_with_the_declared_default(reg: Registry) -> None:
    result = Executor(reg).run(use())
    assert result.outputs["3"] == {"text": ["12.0"]}  # 2 × default 3 × (1 + 1): version 2
    assert CALLS == ["1", "2:5", "2:6", "3"]
    assert Executor(reg).run(use("component/scaler@1", factor=4)).outputs["3"] == {"text": ["8.0"]}


def test_object_info_lists_every_version(reg: Registry) -> None:
    info = reg.object_info()
    plain = info["component/scaler"]
    assert plain["category"] == "components" and plain["output"] == ["FLOAT"] and plain["output_name"] == ["scaled"]
    assert plain["input"]["required"] == {"x": ["FLOAT"]}
    assert plain["input"]["optional"]["factor"] == ["FLOAT", {"default": 3.0, "min": 0, "max": 5}]
    assert {"component/scaler@1", "component/scaler@2"} <= set(info)


def test_bad_inputs_name_the_component_input_and_a_gone_version_says_so(reg: Registry) -> None:
    with pytest.raises(ValidationFailed) as info:
        Executor(reg).prepare(use(factor=9))
    assert [(e.type, e.node_id, e.class_type, e.input_name) for e in info.value.errors] == [
        ("value_bigger_than_max", "2", "component/scaler", "factor")]
    with pytest.raises(ValidationFailed) as info:
        Executor(reg).prepare(use("component/scaler@3"))
    (err,) = [e for e in info.value.errors if e.node_id == "2"]
    assert err.type == "invalid_prompt" and "'component/scaler@3' does not exist" in err.message
    assert err.hint == ("that version is gone; component/scaler has version(s) 1, 2: pin one of them, "
                        "or use component/scaler for the latest")


def test_identical_instances_compute_once_and_nested_components_expand(reg: Registry) -> None:
    prompt = use()
    prompt["4"] = {"class_type": "component/scaler", "inputs": {"x": ["1", 0]}}
    prompt["5"] = {"class_type": "Show", "inputs": {"x": ["4", 0]}}
    result = Executor(reg).run(prompt)
    assert CALLS == ["1", "2:5", "2:6", "3", "5"] and {"4:5", "4:6"} <= set(result.cached)
    outer = {"component": "twice", "version": 1, "inputs": [{"name": "x", "type": "FLOAT"}],
             "outputs": [{"name": "y", "type": "FLOAT", "from": ["8", 0]}],
             "prompt": {"7": {"class_type": "component/scaler@1", "inputs": {"x": {"__input__": "x"}}},
                        "8": {"class_type": "component/scaler@1", "inputs": {"x": ["7", 0], "factor": 1.0}}}}
    register(reg, [ComponentSpec.from_document(outer)])
    CALLS.clear()
    assert Executor(reg).run(use("component/twice")).outputs["3"] == {"text": ["6.0"]}
    assert CALLS == ["1", "2:7:5", "2:7:6", "2:8:5", "2:8:6", "3"]


@pytest.mark.parametrize(("change", "message"), [
    ({"component": ""}, "no `component` name"), ({"version": 0}, "positive integer"),
    ({"prompt": []}, "API-format prompt"), ({"outputs": [{"name": "y", "type": "FLOAT", "from": ["99", 0]}]},
                                            "from: [body node id, slot]"),
    ({"component": "a/b"}, "may not contain")])
def test_malformed_documents_are_refused_clearly(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ComponentError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ComponentSpec.from_document({**scaler(), **change}, "x.json")
