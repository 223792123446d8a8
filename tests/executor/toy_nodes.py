"""Toy FLOAT nodes shared by the subgraph and component tests: every run appends its node id to CALLS."""
from __future__ import annotations

from typing import Any

from executor.schema import Input, Node, Output, Registry, Result

CALLS: list[str] = []


class Num(Node):
    type = "Num"
    inputs = (Input("value", "FLOAT", default=1.0, min=-100, max=100),)
    outputs = (Output("FLOAT"),)

    def run(self, ctx: Any, value: float) -> tuple[Any, ...]:
        CALLS.append(ctx.node_id)
        return (value,)


class Scale(Node):
    type = "Scale"
    inputs = (Input("x", "FLOAT"), Input("factor", "FLOAT", default=2.0, min=0, max=10))
    outputs = (Output("FLOAT"),)

    def run(self, ctx: Any, x: float, factor: float) -> tuple[Any, ...]:
        CALLS.append(ctx.node_id)
        ctx.progress(1, 1)
        return (x * factor,)


class Show(Node):
    type = "Show"
    output_node = True
    inputs = (Input("x", "FLOAT"), Input("y", "FLOAT", optional=True))

    def run(self, ctx: Any, x: float, y: float | None = None) -> Result:
        CALLS.append(ctx.node_id)
        return Result((), {"text": [str(x if y is None else (x, y))]})


def toy_registry() -> Registry:
    registry = Registry()
    registry.register(Num, Scale, Show)
    return registry
