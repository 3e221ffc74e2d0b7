"""Every schema says draft-07, the draft fastjsonschema implements, and uses only its words.

fastjsonschema accepts a keyword it does not know without a word and checks nothing for
it (shown below), so a 2020-12 keyword in a draft-07 schema is a check that silently never
runs. The walk here visits every schema position of every file in schemas/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest

from worker.core import schemas

ROOT = Path(__file__).resolve().parents[2] / "schemas"
FILES = sorted(ROOT.rglob("*.json"))
DRAFT_07 = "http://json-schema.org/draft-07/schema#"
#: The keywords of draft-07 (json-schema.org/draft-07/schema), and "$defs": a container our
#: files keep definitions in, reached by a "$ref" JSON pointer, which draft-07 resolves.
KEYWORDS = frozenset({
    "$schema", "$id", "$ref", "$comment", "title", "description", "default", "readOnly",
    "writeOnly", "examples", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "additionalItems", "items",
    "maxItems", "minItems", "uniqueItems", "contains", "maxProperties", "minProperties",
    "required", "additionalProperties", "definitions", "properties", "patternProperties",
    "dependencies", "propertyNames", "const", "enum", "type", "format", "contentMediaType",
    "contentEncoding", "if", "then", "else", "allOf", "anyOf", "oneOf", "not", "$defs",
})
#: Beside "$ref", draft-07 ignores every other keyword (fastjsonschema too); these only
#: annotate, so they may stand there.
ANNOTATIONS = frozenset({"$comment", "title", "description", "default", "examples"})
SCHEMA_MAPS = ("properties", "patternProperties", "definitions", "$defs")
ONE_SCHEMA = ("additionalItems", "additionalProperties", "contains", "propertyNames", "if",
              "then", "else", "not")


def _positions(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (JSON pointer, schema object) below node, node included."""
    if not isinstance(node, dict):
        return  # true/false schemas
    yield where, node
    for key in SCHEMA_MAPS:
        for name, inner in node.get(key, {}).items():
            yield from _positions(inner, f"{where}/{key}/{name}")
    for key in ONE_SCHEMA:
        if key in node:
            yield from _positions(node[key], f"{where}/{key}")
    for key in ("allOf", "anyOf", "oneOf"):
        for index, inner in enumerate(node.get(key, [])):
            yield from _positions(inner, f"{where}/{key}/{index}")
    items = node.get("items")
    for index, inner in enumerate(items if isinstance(items, list) else [items]):
        yield from _positions(inner, f"{where}/items" + (f"/{index}" if isinstance(items, list)
                                                           else ""))
    for name, inner in node.get("dependencies", {}).items():
        if isinstance(inner, dict):
            yield from _positions(inner, f"{where}/dependencies/{name}")


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_walk_sees_every_schema_file() -> None:
    """The files this module checks are all there are: rpc and events, definitions included."""
    assert 40 < len(FILES)
    assert {"rpc", "events"} == {p.parent.name for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_every_schema_file_declares_draft_07_and_compiles(path: Path) -> None:
    """$schema is draft-07 at the top of each file, and fastjsonschema compiles it as the
    worker does (with its kind's shared definitions merged in)."""
    schema = _load(path)

    assert DRAFT_07 == schema.get("$schema")
    if path.stem == "definitions":
        assert callable(fastjsonschema.compile(schema))
    else:
        assert callable(schemas.validator(path.parent.name, path.stem))


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_every_keyword_is_one_draft_07_has(path: Path) -> None:
    """No prefixItems, unevaluatedProperties, dependentRequired, $anchor, ... nor a typo."""
    unknown = [f"{where}: {key}" for where, node in _positions(_load(path), "#")
               for key in node if key not in KEYWORDS]

    assert [] == unknown


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_nothing_but_annotations_stands_beside_a_ref(path: Path) -> None:
    """Draft-07 ignores a $ref's siblings: {"$ref": ..., "maxLength": 2} would not check 2."""
    ignored = [f"{where}: {sorted(set(node) - ANNOTATIONS - {'$ref'})}"
               for where, node in _positions(_load(path), "#")
               if "$ref" in node and set(node) - ANNOTATIONS - {"$ref"}]

    assert [] == ignored


@pytest.mark.parametrize(("schema", "instance"), [
    ({"prefixItems": [{"type": "string"}]}, [1]),
    ({"properties": {"a": {}}, "unevaluatedProperties": False}, {"b": 1}),
    ({"dependentRequired": {"a": ["b"]}}, {"a": 1}),
    ({"$defs": {"s": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/s",
                                                                "maxLength": 2}}},
     {"a": "too long"}),
], ids=["prefixItems", "unevaluatedProperties", "dependentRequired", "ref-sibling"])
def test_fastjsonschema_silently_lets_through_what_draft_07_does_not_know(
        schema: dict[str, Any], instance: Any) -> None:
    """Why the walks above matter: each of these would be a check that never runs."""
    validate = fastjsonschema.compile({"$schema": DRAFT_07, **schema})

    assert instance == validate(instance)
