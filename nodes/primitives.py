"""Primitive value nodes: a typed constant (string, int, float, boolean) as an output other nodes can link."""
from __future__ import annotations

import sys
from typing import Any

from executor.schema import Input, Node, Output


class _Primitive(Node):
    category = "utils/primitive"
    python_module = "comfy_extras.nodes_primitive"
    outputs: tuple[Output, ...] = ()

    def run(self, ctx: Any, value: Any) -> tuple[Any, ...]:
        return (value,)


class PrimitiveString(_Primitive):
    type = "PrimitiveString"
    display_name = "String"
    inputs = (Input("value", "STRING"),)
    outputs = (Output("STRING"),)


class PrimitiveStringMultiline(_Primitive):
    type = "PrimitiveStringMultiline"
    display_name = "String (Multiline)"
    inputs = (Input("value", "STRING", multiline=True),)
    outputs = (Output("STRING"),)


class PrimitiveInt(_Primitive):
    type = "PrimitiveInt"
    display_name = "Int"
    inputs = (Input("value", "INT", min=-sys.maxsize, max=sys.maxsize, extra={"control_after_generate": True}),)
    outputs = (Output("INT"),)


class PrimitiveFloat(_Primitive):
    type = "PrimitiveFloat"
    display_name = "Float"
    inputs = (Input("value", "FLOAT", min=-sys.maxsize, max=sys.maxsize),)
    outputs = (Output("FLOAT"),)


class PrimitiveBoolean(_Primitive):
    type = "PrimitiveBoolean"
    display_name = "Boolean"
    inputs = (Input("value", "BOOLEAN"),)
    outputs = (Output("BOOLEAN"),)


NODES = (PrimitiveString, PrimitiveStringMultiline, PrimitiveInt, PrimitiveFloat, PrimitiveBoolean)
