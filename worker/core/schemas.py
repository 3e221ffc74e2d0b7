"""Load the JSON Schemas shipped in the ``schemas`` package and compile them once."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import fastjsonschema

from worker.errors import InvalidArguments

Validator = Callable[[Any], Any]


def _read(kind: str, name: str) -> dict[str, Any]:
    text = resources.files("schemas").joinpath(kind, f"{name}.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def names(kind: str) -> list[str]:
    """Schema names (file stems) of one kind: ``rpc`` or ``events``."""
    folder = resources.files("schemas").joinpath(kind)
    return sorted(
        p.name[: -len(".json")]
        for p in folder.iterdir()
        if p.name.endswith(".json") and p.name != "definitions.json"
    )


@functools.cache
def raw(kind: str, name: str) -> dict[str, Any]:
    """One schema as data, with its kind's shared ``$defs`` (definitions.json) merged in."""
    schema = _read(kind, name)
    if kind in ("rpc", "events") and name != "notification":
        schema = {**schema, "$defs": _read(kind, "definitions")["$defs"]}
    return schema


@functools.cache
def validator(kind: str, name: str) -> Validator:
    """A compiled validator; it fills in defaults and raises on invalid data."""
    # fastjsonschema turns a schema into Python code once; validating is then a
    # plain function call, about 10-50x quicker than jsonschema's interpreter.
    compiled: Validator = fastjsonschema.compile(raw(kind, name), use_default=True)
    return compiled


def check_args(method: str, args: dict[str, Any]) -> dict[str, Any]:
    """Validate one RPC method's args, returning them with defaults filled in."""
    try:
        checked: dict[str, Any] = validator("rpc", method)(args)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise InvalidArguments(f"{method}: {exc.message}") from None
    return checked
