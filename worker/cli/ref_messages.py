"""The message reference (docs/reference.md), written from the method table and schemas/.

Every RPC method of handlers/registry.py: its args (schemas/rpc/<method>.json), its reply
(the handler's return), the events it sends (its action, the payload class
worker.codec.payloads picks, and the phases its handler sends itself) and the errors its
code can raise (ref_raises); then every event payload of schemas/events/.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Iterable
from typing import Any

from handlers.registry import API_VERSION, METHODS
from worker.cli.ref_raises import Walker
from worker.codec import payloads
from worker.core import schemas
from worker.core.methods import Method
from worker.errors import BadMessage, HypervisorUnavailable, WorkerError

HEADER = """\
# Message reference

Generated from the code by `python -m worker.cli.refs` (from `handlers/registry.py`,
`schemas/` and `worker/codec/payloads.py`); do not edit by hand: the unit tier fails
when this file is stale.
"""


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def type_of(schema: Any) -> str:
    """A short name for what a schema accepts."""
    if not isinstance(schema, dict):
        return "any"
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "const" in schema:
        return f"`{schema['const']!r}`"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" if v is not None else "null"
                                     for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(dict.fromkeys(type_of(s) for s in schema[key]))
    if "if" in schema and "then" in schema:
        return f"{type_of(schema['then'])} (or {type_of(schema.get('else', {}))})"
    if "allOf" in schema:
        return " and ".join(dict.fromkeys(type_of(s) for s in schema["allOf"]))
    kinds = schema.get("type")
    if kinds is None:
        return "object" if "properties" in schema else "any"
    kinds = kinds if isinstance(kinds, list) else [kinds]
    names = []
    for kind in kinds:
        if kind == "array" and isinstance(schema.get("items"), dict):
            names.append(f"array of {type_of(schema['items'])}")
        else:
            names.append(str(kind))
    return " or ".join(names)


def _fields(schema: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Properties and required names, through allOf and local $refs."""
    props: dict[str, Any] = {}
    required = set(schema.get("required", []))
    for part in schema.get("allOf", []):
        if "$ref" in part:
            part = defs.get(part["$ref"].rsplit("/", 1)[-1], {})
        more, need = _fields(part, defs)
        props.update(more)
        required |= need
    props.update(schema.get("properties", {}))
    return props, required


def _table(schema: dict[str, Any], defs: dict[str, Any], label: str) -> list[str]:
    props, required = _fields(schema, defs)
    if not props:
        return ["No fields.", ""]
    lines = [f"| {label} | type | required | default | description |", "|---|---|---|---|---|"]
    for name, spec in props.items():
        spec = spec if isinstance(spec, dict) else {}
        described = spec.get("description")
        if described is None and "$ref" in spec:
            described = defs.get(spec["$ref"].rsplit("/", 1)[-1], {}).get("description")
        default = f"`{spec['default']!r}`" if "default" in spec else ""
        lines.append(f"| `{name}` | {_cell(type_of(spec))} | "
                     f"{'yes' if name in required else ''} | {_cell(default)} | "
                     f"{_cell(described or '')} |")
    return [*lines, ""]


def _doc(obj: Any) -> str:
    return (inspect.getdoc(obj) or "").split("\n\n", 1)[0].replace("\n", " ")


def _reply(method: Method) -> str:
    hint = typing.get_type_hints(method.handler).get("return")
    name = getattr(hint, "__name__", None) if isinstance(hint, type) else None
    text = name or str(hint).replace("typing.", "")
    if name == "Answer":
        return ("the reply nova expects (the handler returns an `Answer`: its `reply` is sent, "
                "its `state` goes to the events)")
    return f"the handler's return value, `{text}`"


def _payload_class(action: str) -> str:
    if action == "create":
        return "InstanceCreatePayload"
    return payloads._action_class(action, {})[0]


def _link(name: str) -> str:
    return f"[`{name}`](#{name.lower()})"


def _events(method: Method, sent: Iterable[tuple[str, str]]) -> list[str]:
    rows: list[tuple[str, str]] = []
    if method.action:
        for phase in ("start", "end", "error"):
            rows.append((f"instance.{method.action}.{phase}", _payload_class(method.action)))
    for action, phase in sorted(set(sent)):
        rows.append((f"instance.{action}.{phase}", _payload_class(action)))
    if not rows:
        return ["**Events**: none.", ""]
    lines = ["**Events**:", ""]
    for event_type, cls in rows:
        priority = "ERROR" if event_type.endswith(".error") else "INFO"
        version = payloads.VERSIONS.get(cls, "")
        lines.append(f"- `{event_type}` ({priority}): {_link(cls)} {version}")
    return [*lines, ""]


def _treatment(method: Method) -> str:
    said = ["waits in its instance's line" if method.ordered
            else "does not wait in its instance's line"]
    said.append("journaled: a redelivery replays its answers instead of running again"
                if method.mutating else "not journaled (changes nothing)")
    return "; ".join(said) + "."


def _method(method: Method, walker: Walker, defs: dict[str, Any]) -> list[str]:
    schema = schemas.raw("rpc", method.name)
    found = walker.function(method.handler)
    handler = f"{method.handler.__module__}.{method.handler.__name__}"
    lines = [f"### `{method.name}`", ""]
    if schema.get("description"):
        lines += [schema["description"], ""]
    lines += [f"Handler `{handler}`: {_doc(method.handler)} It {_treatment(method)}", ""]
    lines += ["**Args**:", "", *_table(schema, defs, "arg")]
    lines += [f"**Reply** (when called): {_reply(method)}.", ""]
    lines += _events(method, found.events)
    errors = sorted(e.__name__ for e in found.errors
                    if not issubclass(e, HypervisorUnavailable | BadMessage))
    lines += ["**Errors** its code can raise (besides the ones every method has): "
              + (", ".join(f"`{e}`" for e in errors) if errors else "none") + ".", ""]
    return lines


def _error_rows() -> list[str]:
    lines = ["| error | module on the wire | meaning |", "|---|---|---|"]
    seen: list[type[WorkerError]] = []
    todo: list[type[WorkerError]] = [WorkerError]
    while todo:
        cls = todo.pop(0)
        seen.append(cls)
        todo += sorted(cls.__subclasses__(), key=lambda c: c.__name__)
    for cls in sorted(seen, key=lambda c: c.__name__):
        if cls.__module__ == "worker.errors":
            lines.append(f"| `{cls.wire_name or cls.__name__}` | `{cls.wire_module}` | "
                         f"{_cell(_doc(cls))} |")
    return [*lines, ""]


def _payload(name: str, defs: dict[str, Any]) -> list[str]:
    schema = schemas.raw("events", name)
    lines = [f"### `{name}`", ""]
    if schema.get("title"):
        lines += [f"{schema['title']}.", ""]
    if schema.get("description"):
        lines += [schema["description"], ""]
    return [*lines, *_table(schema, defs, "field")]


# Cached: the code it reads does not change while a process runs.
@functools.cache
def render() -> str:
    """The whole reference, as Markdown."""
    rpc_defs = schemas.raw("rpc", next(iter(METHODS))).get("$defs", {})
    event_names = [n for n in schemas.names("events") if n != "notification"]
    event_defs = schemas.raw("events", event_names[0]).get("$defs", {})
    walker = Walker()
    lines = [HEADER, f"The worker serves nova's compute RPC API {API_VERSION} (oslo's rule: a "
             "message of the same major version and a minor not above it is served).", ""]
    lines += ["## Contents", "", "- [RPC methods](#rpc-methods)"]
    lines += [f"  - [`{name}`](#{name})" for name in METHODS]
    lines += ["- [Errors](#errors)", "- [Event payloads](#event-payloads)"]
    lines += [f"  - {_link(name)}" for name in ["notification", *event_names]]
    lines += ["- [Shared definitions](#shared-definitions)", ""]
    lines += ["## RPC methods", "",
              "Every method may also be answered with `InvalidArguments` (the args fail its "
              "schema), `UnsupportedVersion`, `NoSuchMethod`, `InvalidEnvelope`, "
              "`MessageTooLarge` or `BadSignature`: a call gets them as its reply's failure, "
              "a cast as `rpc_message.reject.error` ([`RpcRejectPayload`](#rpcrejectpayload)). "
              "While libvirt is unreachable a verb waits for it (`HypervisorUnavailable` is "
              "never an answer). An error event's `fault` is an `ExceptionPayload` naming "
              "the error.", ""]
    for method in METHODS.values():
        lines += _method(method, walker, rpc_defs)
    lines += ["## Errors", "", "Every error the worker names on the wire "
              "(`worker/errors.py`); nova's own keep module `nova.exception`.", ""]
    lines += _error_rows()
    lines += ["## Event payloads", "", "Each is the `nova_object.data` of an event's payload "
              "(schemas/events/<name>.json), inside the envelope every event shares, "
              "`notification`.", ""]
    for name in ["notification", *event_names]:
        lines += _payload(name, event_defs)
    lines += ["## Shared definitions", ""]
    for title, defs in (("RPC args", rpc_defs), ("event payloads", event_defs)):
        lines += [f"Of {title}:", ""]
        lines += [f"- `{name}`: {type_of(spec)}. {spec.get('description', '')}".rstrip()
                  for name, spec in defs.items()]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
