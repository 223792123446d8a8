"""The generic engine on toy nodes: ordering, pruning, every validation error, cycles, cache rules, events."""
from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from executor.cache import Cache
from executor.errors import ValidationFailed
from executor.runner import Executor
from executor.schema import Determinism, Input, Node, Output, Registry, Result

CALLS: list[str] = []


class Number(Node):
    type = "Number"
    inputs = (Input("value", "FLOAT", default=1.0, min=-10, max=10),)
    outputs = (Output("FLOAT"),)

    def run(self, ctx: Any, value: float) -> tuple[Any, ...]:
        CALLS.append(ctx.node_id)
        return (value,)


class Add(Node):
    type = "Add"
    inputs = (Input("a", "FLOAT"), Input("b", "FLOAT"), Input("mode", "COMBO", options=["sum", "diff"]),
              Input("bias", "INT", default=0, optional=True, min=0, max=5))
    outputs = (Output("FLOAT"),)

    def run(self, ctx: Any, a: float, b: float, mode: str, bias: int = 0) -> tuple[Any, ...]:
        CALLS.append(ctx.node_id)
        return ((a + b if mode == "sum" else a - b) + bias,)


class Tensorize(Node):
    type = "Tensorize"
    inputs = (Input("x", "FLOAT"), Input("size", "INT", default=4, min=1, max=4096))
    outputs = (Output("TENSOR"),)

    def run(self, ctx: Any, x: float, size: int) -> tuple[Any, ...]:
        CALLS.append(ctx.node_id)
        for step in range(3):
            ctx.progress(step + 1, 3)
        return (torch.full((size,), x),)


class Show(Node):
    type = "Show"
    output_node = True
    inputs = (Input("x", "FLOAT"),)

    def run(self, ctx: Any, x: float) -> Result:
        CALLS.append(ctx.node_id)
        return Result((), {"text": [str(x)]})


class ShowTensor(Node):
    type = "ShowTensor"
    output_node = True
    inputs = (Input("t", "TENSOR"), Input("label", "STRING", default="", optional=True))

    def run(self, ctx: Any, t: torch.Tensor, label: str = "") -> Result:
        CALLS.append(ctx.node_id)
        return Result((), {"sum": [float(t.sum())]})


class Boom(Node):
    type = "Boom"
    inputs = (Input("x", "FLOAT"),)
    outputs = (Output("FLOAT"),)

    def run(self, ctx: Any, x: float) -> tuple[Any, ...]:
        raise RuntimeError("kaboom")


class Clock(Node):
    type = "Clock"
    determinism = Determinism.VOLATILE
    inputs = (Input("name", "STRING", default="a"),)
    outputs = (Output("FLOAT"),)
    state: ClassVar[dict[str, float]] = {"a": 1.0}

    @classmethod
    def fingerprint(cls, name: str) -> str:
        return repr(cls.state[name])

    def run(self, ctx: Any, name: str) -> tuple[Any, ...]:
        CALLS.append(ctx.node_id)
        return (self.state[name],)


@pytest.fixture
def ex() -> Executor:
    CALLS.clear()
    reg = Registry()
    reg.register(Number, Add, Tensorize, Show, ShowTensor, Boom, Clock)
    return Executor(reg)


def graph(a: float = 1.0, b: float = 2.0, mode: str = "sum") -> dict[str, Any]:
    return {
        "1": {"class_type": "Number", "inputs": {"value": a}},
        "2": {"class_type": "Number", "inputs": {"value": b}},
        "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0], "mode": mode}},
        "4": {"class_type": "Show", "inputs": {"x": ["3", 0]}},
        "9": {"class_type": "Number", "inputs": {"value": 5.0}},  # not upstream of any output: pruned
    }


def errors_of(ex: Executor, prompt: dict[str, Any]) -> list[Any]:
    with pytest.raises(ValidationFailed) as info:
        ex.run(prompt)
    return info.value.errors


def test_runs_in_topological_order_and_prunes(ex: Executor) -> None:
    result = ex.run(graph())
    assert result.status == "success"
    assert CALLS == ["1", "2", "3", "4"]
    assert result.outputs == {"4": {"text": ["3.0"]}}


def test_events_in_order_with_comfy_fields(ex: Executor) -> None:
    events: list[Any] = []
    ex.run(graph(), prompt_id="p1", on_event=events.append)
    kinds = [e.type for e in events]
    per_node = ["progress_state", "executing", "progress_state"]  # running, the node, finished
    assert kinds == ["execution_start", "execution_cached", *per_node * 3,
                     "progress_state", "executing", "executed", "progress_state", "execution_success", "executing"]
    assert events[1].data["nodes"] == []
    assert [e.data["node"] for e in events if e.type == "executing"] == ["1", "2", "3", "4", None]
    assert events[-4].data == {"node": "4", "display_node": "4", "output": {"text": ["3.0"]}, "prompt_id": "p1"}
    assert all(e.data["prompt_id"] == "p1" for e in events)
    # progress_state carries every node started so far: running when it starts, finished (value = max) after.
    states = [{nid: (n["state"], n["value"], n["max"]) for nid, n in e.data["nodes"].items()}
              for e in events if e.type == "progress_state"]
    done = ("finished", 1.0, 1.0)
    assert states == [{"1": ("running", 0.0, 1.0)}, {"1": done},
                      {"1": done, "2": ("running", 0.0, 1.0)}, {"1": done, "2": done},
                      {"1": done, "2": done, "3": ("running", 0.0, 1.0)}, {"1": done, "2": done, "3": done},
                      {"1": done, "2": done, "3": done, "4": ("running", 0.0, 1.0)},
                      {"1": done, "2": done, "3": done, "4": done}]
    assert events[2].data == {"prompt_id": "p1", "nodes": {"1": {
        "value": 0.0, "max": 1.0, "state": "running", "node_id": "1", "prompt_id": "p1", "display_node_id": "1",
        "parent_node_id": None, "real_node_id": "1"}}}


def test_progress_state_follows_a_node_through_its_steps(ex: Executor) -> None:
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Tensorize", "inputs": {"x": ["1", 0], "size": 4}},
              "3": {"class_type": "ShowTensor", "inputs": {"t": ["2", 0]}}}
    events: list[Any] = []
    ex.run(prompt, prompt_id="p", on_event=events.append)
    start = next(i for i, e in enumerate(events) if e.type == "executing" and e.data["node"] == "2") - 1
    steps = events[start:start + 9]
    assert [e.type for e in steps] == ["progress_state", "executing", *["progress_state", "progress"] * 3,
                                       "progress_state"]
    node2 = [(e.data["nodes"]["2"]["state"], e.data["nodes"]["2"]["value"], e.data["nodes"]["2"]["max"])
             for e in steps if e.type == "progress_state"]
    assert node2 == [("running", 0.0, 1.0), ("running", 1, 3), ("running", 2, 3), ("running", 3, 3),
                     ("finished", 3, 3)]
    assert [e.data["value"] for e in steps if e.type == "progress"] == [1, 2, 3]
    assert not any(e.type == "preview" for e in events)  # previews only for an executor that asked for them

    # A cached output node re-sends executed (when it has UI output) and then reads as finished.
    events.clear()
    ex.run(prompt, prompt_id="q", on_event=events.append)
    assert [e.type for e in events] == ["execution_start", "execution_cached", "executed", "progress_state",
                                        "execution_success", "executing"]
    assert events[3].data["nodes"] == {"3": {"value": 1.0, "max": 1.0, "state": "finished", "node_id": "3",
                                             "prompt_id": "q", "display_node_id": "3", "parent_node_id": None,
                                             "real_node_id": "3"}}


def test_previews_reach_events_only_when_the_executor_wants_them() -> None:
    class Painter(Node):
        type = "Painter"
        output_node = True
        inputs = (Input("x", "FLOAT"),)

        def run(self, ctx: Any, x: float) -> Result:
            ctx.progress(1, 1, "an image" if ctx.wants_previews else None)
            return Result((), {"text": [str(x)]})

    reg = Registry()
    reg.register(Number, Painter)
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Painter", "inputs": {"x": ["1", 0]}}}
    for previews, expected in ((False, []), (True, [{"image": "an image", "prompt_id": "p", "node": "2",
                                                      "display_node": "2", "parent_node": None}])):
        events: list[Any] = []
        Executor(reg, previews=previews).run(prompt, prompt_id="p", on_event=events.append)
        assert [e.data for e in events if e.type == "preview"] == expected


def test_identical_rerun_runs_nothing_and_reports_all_cached(ex: Executor) -> None:
    ex.run(graph())
    CALLS.clear()
    events: list[Any] = []
    result = ex.run(graph(), on_event=events.append)
    assert CALLS == []
    assert result.cached == ["1", "2", "3", "4"]
    assert [e.type for e in events if e.type == "executed"] == ["executed"]  # cached output node re-sends its ui


def test_changed_constant_reruns_only_downstream_with_reason(ex: Executor) -> None:
    ex.run(graph())
    CALLS.clear()
    events: list[Any] = []
    ex.run(graph(b=3.0), on_event=events.append)
    assert CALLS == ["2", "3", "4"]
    reasons = {e.data["node"]: e.data["reason"] for e in events if e.type == "executing" and e.data["node"]}
    assert reasons["2"] == "inputs changed: value"
    assert reasons["3"] == "upstream changed: 2"


def test_a_b_a_is_a_cache_hit(ex: Executor) -> None:
    ex.run(graph(mode="sum"))
    ex.run(graph(mode="diff"))
    CALLS.clear()
    result = ex.run(graph(mode="sum"))
    assert CALLS == []
    assert result.outputs["4"] == {"text": ["3.0"]}


def test_same_subchain_under_other_ids_shares_results(ex: Executor) -> None:
    ex.run(graph())
    CALLS.clear()
    renamed = {"a" + k: {**v, "inputs": {n: (["a" + x[0], x[1]] if isinstance(x, list) else x)
                                         for n, x in v["inputs"].items()}} for k, v in graph().items()}
    ex.run(renamed)
    assert CALLS == []


def test_volatile_node_reruns_when_fingerprint_changes(ex: Executor) -> None:
    prompt = {"1": {"class_type": "Clock", "inputs": {"name": "a"}},
              "2": {"class_type": "Show", "inputs": {"x": ["1", 0]}}}
    ex.run(prompt)
    CALLS.clear()
    ex.run(prompt)
    assert CALLS == []
    Clock.state["a"] = 2.0
    assert ex.run(prompt).outputs["2"] == {"text": ["2.0"]}
    assert CALLS == ["1", "2"]


def test_every_error_reported_at_once(ex: Executor) -> None:
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 11}},  # too big
        "2": {"class_type": "Number", "inputs": {"value": "abc"}},  # not a number
        "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0], "mode": "mul", "bias": -1}},
        "4": {"class_type": "Show", "inputs": {"x": ["3", 0]}},
        "5": {"class_type": "Add", "inputs": {"a": ["1", 0], "mode": "sum", "b": ["1", 0, 3]}},
        "6": {"class_type": "Show", "inputs": {"x": ["5", 0]}},
        "7": {"class_type": "Show", "inputs": {"x": ["77", 0]}},
        "8": {"class_type": "Show", "inputs": {"x": ["1", 4]}},
        "10": {"class_type": "Tensorize", "inputs": {"x": ["1", 0], "size": 4}},
        "11": {"class_type": "Show", "inputs": {"x": ["10", 0]}},
        "12": {"class_type": "Show", "inputs": {}},
        "13": {"class_type": "Nmber", "inputs": {}},
    }
    errs = errors_of(ex, prompt)
    found = {(e.type, e.node_id, e.input_name) for e in errs}
    assert found == {
        ("value_bigger_than_max", "1", "value"),
        ("invalid_input_type", "2", "value"),
        ("value_not_in_list", "3", "mode"),
        ("value_smaller_than_min", "3", "bias"),
        ("bad_linked_input", "5", "b"),
        ("dangling_link", "7", "x"),
        ("output_slot_out_of_range", "8", "x"),
        ("return_type_mismatch", "11", "x"),
        ("required_input_missing", "12", "x"),
        ("invalid_prompt", "13", None),
    }
    by = {(e.type, e.node_id): e for e in errs}
    assert by[("value_bigger_than_max", "1")].received == 11
    assert by[("value_not_in_list", "3")].expected == ["sum", "diff"]
    assert by[("return_type_mismatch", "11")].expected == "FLOAT"
    assert by[("return_type_mismatch", "11")].received == "TENSOR"
    assert "Number" in by[("invalid_prompt", "13")].hint
    assert CALLS == []  # nothing ran


def test_no_output_node(ex: Executor) -> None:
    errs = errors_of(ex, {"1": {"class_type": "Number", "inputs": {"value": 1}}})
    assert [e.type for e in errs] == ["prompt_no_outputs"]


def test_cycle_names_every_node(ex: Executor) -> None:
    prompt = {
        "1": {"class_type": "Add", "inputs": {"a": ["3", 0], "b": ["0", 0], "mode": "sum"}},
        "0": {"class_type": "Number", "inputs": {"value": 1}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["0", 0], "mode": "sum"}},
        "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": ["0", 0], "mode": "sum"}},
        "4": {"class_type": "Show", "inputs": {"x": ["3", 0]}},
    }
    errs = errors_of(ex, prompt)
    assert {e.node_id for e in errs if e.type == "dependency_cycle"} == {"1", "2", "3"}
    assert all(e.received == ["1", "2", "3"] for e in errs)


def test_literal_list_and_coercion(ex: Executor) -> None:
    prompt = graph()
    prompt["1"]["inputs"]["value"] = "2.5"  # strings that parse are coerced, as ComfyUI does
    assert ex.run(prompt).outputs["4"] == {"text": ["4.5"]}


def test_node_error_is_an_event_not_a_crash(ex: Executor) -> None:
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Boom", "inputs": {"x": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"x": ["2", 0]}}}
    events: list[Any] = []
    result = ex.run(prompt, on_event=events.append)
    assert result.status == "error"
    err = next(e for e in events if e.type == "execution_error").data
    assert err["node_id"] == "2" and err["node_type"] == "Boom"
    assert err["exception_message"] == "kaboom" and err["exception_type"] == "builtins.RuntimeError"
    assert err["executed"] == ["1"] and any("kaboom" in line for line in err["traceback"])
    assert events[-1].data == {"node": None, "prompt_id": result.prompt_id}
    assert ex.run(graph()).status == "success"  # the next prompt runs normally


def test_interrupt_at_progress(ex: Executor) -> None:
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Tensorize", "inputs": {"x": ["1", 0], "size": 4}},
              "3": {"class_type": "ShowTensor", "inputs": {"t": ["2", 0]}}}
    events: list[Any] = []

    def on_event(e: Any) -> None:
        events.append(e)
        if e.type == "progress" and e.data["value"] == 2:
            ex.interrupt_flag.set()

    CALLS.clear()
    result = ex.run(prompt, on_event=on_event)
    assert result.status == "interrupted"
    assert [e.data["value"] for e in events if e.type == "progress"] == [1, 2]  # step 3 never reported
    last = next(e for e in events if e.type == "execution_interrupted").data
    assert last["node_id"] == "2" and last["node_type"] == "Tensorize" and last["executed"] == ["1"]
    # Nothing after the interrupted node ran or produced output, and its half-done value was not cached.
    assert CALLS == ["1", "2"] and result.outputs == {} and "3" not in result.ran
    assert [e.type for e in events][-2:] == ["execution_interrupted", "executing"]
    assert events[-1].data == {"node": None, "prompt_id": result.prompt_id}
    # The flag is cleared by the next run, which resumes from the cache: only the interrupted node onward runs.
    CALLS.clear()
    again = ex.run(prompt)
    assert again.status == "success" and not ex.interrupt_flag.is_set()
    assert CALLS == ["2", "3"] and again.outputs["3"] == {"sum": [4.0]}


def test_lru_budget_evicts_and_reason_says_so() -> None:
    CALLS.clear()
    reg = Registry()
    reg.register(Number, Tensorize, ShowTensor)
    ex = Executor(reg, Cache(outputs_budget=3 * 1024 * 4 + 100))

    def prompt(size: int, label: str = "") -> dict[str, Any]:
        return {"1": {"class_type": "Number", "inputs": {"value": 1}},
                "2": {"class_type": "Tensorize", "inputs": {"x": ["1", 0], "size": size}},
                "3": {"class_type": "ShowTensor", "inputs": {"t": ["2", 0], "label": label}}}

    for size in (1024, 1025, 1026, 1027):
        ex.run(prompt(size))
    CALLS.clear()
    events: list[Any] = []
    # A new consumer of the least recently used tensor: the tensor was evicted, so its producer re-runs.
    ex.run(prompt(1024, "again"), on_event=events.append)
    assert "2" in CALLS
    assert [e.data["reason"] for e in events if e.type == "executing" and e.data["node"] == "2"] == [
        "evicted from the cache"]
    assert ex.cache.pools["outputs"].nbytes <= 3 * 1024 * 4 + 100
    CALLS.clear()
    ex.run(prompt(1027, "again"))  # most recent: still there
    assert CALLS == ["3"]


def test_object_info_shape() -> None:
    info = Add.object_info()
    assert info["input"]["required"]["mode"] == [["sum", "diff"]]
    assert info["input"]["required"]["a"] == ["FLOAT"]
    assert info["input"]["optional"]["bias"] == ["INT", {"default": 0, "min": 0, "max": 5}]
    assert info["input_order"] == {"required": ["a", "b", "mode"], "optional": ["bias"]}
    assert info["output"] == ["FLOAT"] and info["output_name"] == ["FLOAT"] and info["output_is_list"] == [False]
    assert info["name"] == "Add" and info["output_node"] is False and info["category"] == "sd"


def test_module_that_fails_to_import_is_reported_and_skipped() -> None:
    reg = Registry()
    reg.load_modules(["tests.executor.no_such_module", "executor.schema"])
    assert "tests.executor.no_such_module" in reg.failed
    assert "executor.schema" in reg.failed  # imports, but has no NODES: reported too
    assert reg.nodes == {}


def test_object_info_declares_list_outputs() -> None:
    class Batch(Node):
        type = "Batch"
        outputs = (Output("INT", "items", is_list=True), Output("INT", "count"))

        def run(self, ctx: Any) -> tuple[Any, ...]:
            return [1, 2], 2

    info = Batch.object_info()
    assert info["output_is_list"] == [True, False] and info["output_name"] == ["items", "count"]


def test_cache_counts_storage_shared_with_another_entry_once() -> None:
    """A view over cached weights (a LoRA'd model sharing its base's tensors) costs only its own tensors."""
    cache = Cache(outputs_budget=10 * 2**20, models_budget=10 * 2**20)
    base = torch.nn.Linear(512, 1024)  # 2 MiB of weights
    cache.put("base", (base,), None, "models")

    class View:
        def __init__(self, module: torch.nn.Module) -> None:
            self.module, self.extra = module, torch.zeros(1024)  # shares the weights, adds 4 KiB

    cache.put("view1", (View(base),), None, "models")
    cache.put("view2", (View(base),), None, "outputs")
    stats = cache.stats()
    weights = sum(p.numel() * 4 for p in base.parameters())
    assert stats["models"]["bytes"] == weights + 4096 and stats["outputs"]["bytes"] == 4096
    assert all(k in cache for k in ("base", "view1", "view2"))


def test_a_check_that_raises_is_a_validation_error_on_its_node_and_the_rest_is_still_reported() -> None:
    class Fragile(Node):
        type = "Fragile"
        inputs = (Input("name", "STRING", default="x"),)
        outputs = (Output("FLOAT"),)

        @classmethod
        def check(cls, name: str) -> dict[str, str]:
            return {"name": "no such thing"} if name == "bad" else {}[name]  # KeyError for anything else

        def run(self, ctx: Any, name: str) -> tuple[Any, ...]:
            return (1.0,)

    reg = Registry()
    reg.register(Number, Show, Fragile)
    prompt = {"1": {"class_type": "Fragile", "inputs": {"name": "x"}},
              "2": {"class_type": "Show", "inputs": {"x": ["1", 0]}},
              "3": {"class_type": "Fragile", "inputs": {"name": "bad"}},
              "4": {"class_type": "Show", "inputs": {"x": ["3", 0]}},
              "5": {"class_type": "Number", "inputs": {"value": 99.0}},
              "6": {"class_type": "Show", "inputs": {"x": ["5", 0]}}}
    errors = errors_of(Executor(reg), prompt)
    assert [(e.type, e.node_id, e.input_name) for e in errors] == [
        ("custom_validation_failed", "1", None), ("custom_validation_failed", "3", "name"),
        ("value_bigger_than_max", "5", "value")]
    assert errors[0].message == "Fragile could not check its inputs: KeyError: 'x'"
    assert errors[0].received == {"name": "x"}
