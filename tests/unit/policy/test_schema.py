"""The JSON Schema: built from the loader's tables, valid draft 2020-12, and it
accepts every shipped policy and every good vector.

`jsonschema` (dev extra) validates when installed; a small validator for the
keywords this schema uses runs always, so the check never silently disappears.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatekeeper.core.catalog import Purpose
from gatekeeper.policy import vocabulary as V
from gatekeeper.policy.schema import json_schema

ROOT = Path(__file__).resolve().parents[3]
DOCUMENTS = sorted((ROOT / "policies").rglob("*.yaml")) + sorted(
    (ROOT / "tests" / "vectors" / "policies" / "good").glob("*.yaml")
)
SCHEMA = json_schema()

# Shapes the loader refuses and the schema can see are wrong, too.
STRUCTURALLY_BAD = [
    "rules: []\n",  # no version
    "version: 2\n",
    "version: 1\nrulez: []\n",
    "version: 1\nmode: dry-run\n",
    "version: 1\nrules:\n  - match: {crawlers: []}\n    action: block\n",
    "version: 1\nrules:\n  - match: {path: /a}\n    action: block\n",
    "version: 1\nrules:\n  - action: rate_limit\n",
    "version: 1\nrules:\n  - action: {block: {status: 200}}\n",
    "version: 1\nrules:\n  - action: {rate_limit: {rate: fast}}\n",
    "version: 1\nrules:\n  - action: {rate_limit: {rate: 1/s, burst: 0}}\n",
    "version: 1\nrules:\n  - action: {allow: null, monitor: null}\n",
    "version: 1\nrules:\n  - {name: default, action: allow}\n",
    "version: 1\nrules:\n  - match: {purposes: [ai-trainig]}\n    action: block\n",
    "version: 1\nrules:\n  - match: {headers: {X: maybe}}\n    action: block\n",
    "version: 1\nlicenses:\n  - {name: 'a b'}\n",
    "version: 1\nhosts:\n  - rules: []\n",
]


def test_schema_covers_exactly_the_loaders_vocabulary() -> None:
    assert set(SCHEMA["properties"]) == set(V.TOP_KEYS)
    assert SCHEMA["additionalProperties"] is False
    assert SCHEMA["required"] == ["version"]
    rule = SCHEMA["$defs"]["rule"]
    assert set(rule["properties"]) == set(V.RULE_KEYS)
    match = rule["properties"]["match"]["oneOf"][1]
    assert set(match["properties"]) == set(V.MATCH_KEYS)
    assert match["properties"]["purposes"]["oneOf"][0]["enum"] == [p.value for p in Purpose]
    action = SCHEMA["$defs"]["action"]["oneOf"][1]
    assert set(action["properties"]) == set(V.ACTIONS)


def test_schema_rate_syntax_is_the_loaders() -> None:
    rate = SCHEMA["$defs"]["action"]["oneOf"][1]["properties"]["rate_limit"]
    assert rate["properties"]["rate"]["oneOf"][1]["pattern"] == V.RATE_PATTERN


def test_every_key_has_a_description_for_editors() -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for schema in node.get("properties", {}).values():
                assert schema.get("description"), schema
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(SCHEMA)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_shipped_and_good_policies_satisfy_the_schema(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    assert validate(SCHEMA, document) == []


@pytest.mark.parametrize("text", STRUCTURALLY_BAD)
def test_structurally_bad_policies_fail_the_schema(text: str) -> None:
    assert validate(SCHEMA, yaml.safe_load(text)) != []


def test_with_jsonschema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator
    validator.check_schema(SCHEMA)
    for path in DOCUMENTS:
        errors = list(validator(SCHEMA).iter_errors(yaml.safe_load(path.read_text())))
        assert errors == [], (path, [e.message for e in errors])
    for text in STRUCTURALLY_BAD:
        assert list(validator(SCHEMA).iter_errors(yaml.safe_load(text))), text


# -- a validator for the subset of JSON Schema that json_schema() uses --------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "null": (type(None),),
    "integer": (int,), "number": (int, float),
}
_KNOWN = {
    "$schema", "$defs", "$ref", "title", "description", "type", "enum", "const", "oneOf",
    "not", "properties", "additionalProperties", "required", "items", "minItems",
    "minProperties", "maxProperties", "minimum", "maximum", "exclusiveMinimum", "pattern",
    "minLength", "maxLength",
}


def validate(schema: dict[str, Any], value: Any, root: dict[str, Any] | None = None) -> list[str]:
    """Error messages; empty when `value` satisfies `schema`."""
    root = root or schema
    unknown = set(schema) - _KNOWN
    assert not unknown, f"the test validator does not know {unknown}"
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return validate(target, value, root)
    for check in (_check_type, _check_values, _check_branches, _check_object, _check_array):
        errors = check(schema, value, root)
        if errors:
            return errors
    return []


def _check_type(schema: dict[str, Any], value: Any, root: dict[str, Any]) -> list[str]:
    kind = schema.get("type")
    if kind is None:
        return []
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{value!r} is not of type boolean"]
    if isinstance(value, bool) or not isinstance(value, _TYPES[kind]):
        return [f"{value!r} is not of type {kind}"]
    return []


def _check_values(schema: dict[str, Any], value: Any, root: dict[str, Any]) -> list[str]:
    if "enum" in schema and value not in schema["enum"]:
        return [f"{value!r} not in {schema['enum']}"]
    if "const" in schema and value != schema["const"]:
        return [f"{value!r} != {schema['const']!r}"]
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return [f"{value!r} does not match {schema['pattern']}"]
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1e9):
            return [f"{value!r} has the wrong length"]
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            return [f"{value} out of range"]
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            return [f"{value} too small"]
    return []


def _check_branches(schema: dict[str, Any], value: Any, root: dict[str, Any]) -> list[str]:
    if "oneOf" in schema:
        passing = sum(not validate(branch, value, root) for branch in schema["oneOf"])
        if passing != 1:
            return [f"{value!r} matches {passing} branches of oneOf"]
    if "not" in schema and not validate(schema["not"], value, root):
        return [f"{value!r} matches 'not'"]
    return []


def _check_object(schema: dict[str, Any], value: Any, root: dict[str, Any]) -> list[str]:
    if not isinstance(value, dict):
        return []
    errors = [f"missing {key}" for key in schema.get("required", []) if key not in value]
    if not schema.get("minProperties", 0) <= len(value) <= schema.get("maxProperties", 1e9):
        errors.append(f"{len(value)} properties")
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            errors += validate(properties[key], item, root)
        elif extra is False:
            errors.append(f"unexpected key {key!r}")
        elif isinstance(extra, dict):
            errors += validate(extra, item, root)
    return errors


def _check_array(schema: dict[str, Any], value: Any, root: dict[str, Any]) -> list[str]:
    if not isinstance(value, list):
        return []
    if len(value) < schema.get("minItems", 0):
        return ["too few items"]
    errors: list[str] = []
    for item in value:
        errors += validate(schema.get("items", {}), item, root)
    return errors
