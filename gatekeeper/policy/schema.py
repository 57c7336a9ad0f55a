"""A JSON Schema for policy files, built from the loader's own vocabulary tables
so editor hints and the loader cannot drift apart."""

from __future__ import annotations

from typing import Any

from gatekeeper.core.catalog import Kind, Purpose
from gatekeeper.core.facts import Identity
from gatekeeper.core.model import LimitKey, Mode
from gatekeeper.policy import vocabulary as V


def _strings(enum: list[str] | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "string"}
    if enum is not None:
        item["enum"] = enum
    return {"oneOf": [item, {"type": "array", "items": item, "minItems": 1}]}


def _object(props: dict[str, Any], keys: frozenset[str], required: list[str] | None = None
            ) -> dict[str, Any]:
    assert set(props) == set(keys), "schema and loader vocabulary differ"
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def json_schema() -> dict[str, Any]:
    header_value = {
        "oneOf": [
            {"enum": ["present", "absent"]},
            _object({k: {"type": "string"} for k in V.HEADER_VALUE_KEYS}, V.HEADER_VALUE_KEYS)
            | {"minProperties": 1, "maxProperties": 1},
        ]
    }
    match = _object(
        {
            "crawlers": _strings(),
            "operators": _strings(),
            "purposes": _strings([p.value for p in Purpose]),
            "kinds": _strings([k.value for k in Kind]),
            "identities": _strings([i.value for i in Identity]),
            "paths": _strings(),
            "methods": _strings(),
            "hosts": _strings(),
            "headers": {"type": "object", "additionalProperties": header_value},
        },
        V.MATCH_KEYS,
    )
    block = _object(
        {
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "body": {"type": "string"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        V.BLOCK_KEYS,
    )
    rate_limit = _object(
        {
            "rate": {"oneOf": [{"type": "number", "exclusiveMinimum": 0},
                               {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(/\s*\w+)?\s*$"}]},
            "burst": {"type": "integer", "minimum": 1},
            "key": {"enum": [k.value for k in LimitKey]},
        },
        V.RATE_LIMIT_KEYS,
        ["rate"],
    )
    require_license = _object({"any_of": _strings()}, V.REQUIRE_LICENSE_KEYS, ["any_of"])
    action = {
        "oneOf": [
            {"enum": ["allow", "block", "monitor"]},
            {"type": "object", "minProperties": 1, "maxProperties": 1,
             "additionalProperties": False,
             "properties": {"allow": {"type": "null"}, "monitor": {"type": "null"},
                            "block": {"oneOf": [{"type": "null"}, block]},
                            "rate_limit": rate_limit, "require_license": require_license}},
        ]
    }
    rule = _object({"name": {"type": "string"}, "match": {"oneOf": [{"type": "null"}, match]},
                    "action": action}, V.RULE_KEYS, ["action"])
    rules = {"type": "array", "items": {"$ref": "#/$defs/rule"}}
    licence = _object(
        {"name": {"type": "string"}, "usages": _strings(list(V.USAGES)),
         "description": {"type": "string"}},
        V.LICENSE_KEYS, ["name"],
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Gatekeeper policy, version 1",
        "$defs": {"rule": rule, "action": action},
        **_object(
            {
                "version": {"const": 1},
                "mode": {"enum": [m.value for m in Mode]},
                "default": {"$ref": "#/$defs/action"},
                "license_terms_url": {"type": "string"},
                "licenses": {"type": "array", "items": licence},
                "rules": rules,
                "hosts": {"type": "array", "items": _object(
                    {"hosts": _strings(), "rules": rules}, V.HOST_SECTION_KEYS, ["hosts"])},
                "include": _strings(),
            },
            V.TOP_KEYS,
            ["version"],
        ),
    }
