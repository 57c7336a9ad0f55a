"""A JSON Schema (draft 2020-12) of policy files, for editors.

Built from the loader's own tables (`vocabulary`) and the core's enums, so the
keys, words, ranges and the rate syntax an editor suggests are the ones the
loader accepts. The schema checks shape only; the loader also checks what a
schema cannot (crawler and operator names against the catalog, globs, RE2
regexes, licence references, duplicate keys and rule names) and is the
authority: `gatekeeper check` runs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gatekeeper.core.catalog import Kind, Purpose
from gatekeeper.core.facts import Identity
from gatekeeper.core.model import LimitKey, Mode, RobotsMode
from gatekeeper.policy import vocabulary as V
from gatekeeper.vocabulary_loader import load_vocabularies

Schema = dict[str, Any]

def json_schema() -> Schema:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Gatekeeper policy, version {V.VERSION}",
        "$defs": {"rule": _rule(), "action": _action(), "rules": _rules()},
        **_object(
            V.TOP_KEYS,
            {
                "version": {"const": V.VERSION},
                "mode": _enum(m.value for m in Mode),
                "default": {"$ref": "#/$defs/action"},
                "license_terms_url": {"type": "string", "pattern": r"^(/|https?://)\S*$"},
                "licenses": _list(_license()),
                "rules": {"$ref": "#/$defs/rules"},
                "hosts": _list(_host_section()),
                "include": _strings(allow_empty=True),
                "declarations": _declarations(),
            },
            required=["version"],
        ),
    }


def _object(
    keys: Mapping[str, str], props: dict[str, Schema], required: list[str] | None = None
) -> Schema:
    """An object with exactly the loader's keys, each described for editor hints."""
    if set(props) != set(keys):
        raise AssertionError(f"schema and loader vocabulary differ: {set(props) ^ set(keys)}")
    described = {key: {"description": keys[key], **props[key]} for key in keys}
    out: Schema = {"type": "object", "properties": described, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def _enum(values: Iterable[str]) -> Schema:
    return {"type": "string", "enum": list(values)}


def _strings(item: Schema | None = None, allow_empty: bool = False) -> Schema:
    """One string, or a list of them (the loader reads one string as a one-item list)."""
    one = item or {"type": "string"}
    many: Schema = {"type": "array", "items": one}
    if not allow_empty:
        many["minItems"] = 1
    return {"oneOf": [one, many]}


def _declarations() -> Schema:
    words = load_vocabularies().aipref.names()
    statement: Schema = {
        "type": "object",
        "properties": {
            V.USAGE_PATHS_KEY: {"description": "Path globs the preferences are for.",
                                **_strings({"type": "string", "pattern": "^/"})},
            **{word: {"description": f"The aipref preference {word}: y or n.",
                      "oneOf": [_enum(V.USAGE_VALUES), {"type": "boolean"}]}
               for word in words}},
        "required": [V.USAGE_PATHS_KEY],
        "additionalProperties": False,
    }
    return _object(V.DECLARATION_KEYS, {
        # YAML reads a bare `off` as false.
        "robots_txt": {"oneOf": [_enum(m.value for m in RobotsMode), {"const": False}]},
        "tdmrep": {"type": "boolean"},
        "content_usage": {"type": "boolean"},
        "usage": _list(statement),
    })


def _license() -> Schema:
    return _object(
        V.LICENSE_KEYS,
        {
            "name": {"type": "string", "pattern": V.LICENSE_NAME_PATTERN},
            "usages": _strings(_enum(V.USAGES), allow_empty=True),
            "description": {"type": "string"},
            "paths": _strings({"type": "string", "pattern": "^/"}),
            "price": _object(V.PRICE_KEYS, {
                "amount": {"oneOf": [{"type": "number"}, {"type": "string"}]},
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "per": _enum(("request", "day", "month", "year")),
            }, required=["amount", "currency"]),
            "contact": {"type": "string", "pattern": "^(mailto:|https?://)"},
            "validity": {"oneOf": [{"type": "number"}, {"type": "string"}]},
            "limits": _object(V.LIMIT_KEYS, {
                "requests": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
                "bytes": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
                "per": _enum(("day", "month", "year")),
            }),
        },
        required=["name"],
    )


def _list(item: Schema) -> Schema:
    # The loader reads an empty value ("rules:" and nothing after it) as an empty list.
    return {"oneOf": [{"type": "null"}, {"type": "array", "items": item}]}


def _rules() -> Schema:
    return _list({"$ref": "#/$defs/rule"})


def _rule() -> Schema:
    return _object(
        V.RULE_KEYS,
        {
            "name": {"type": "string", "minLength": 1, "maxLength": V.MAX_RULE_NAME,
                     "not": _enum(sorted(V.RESERVED_RULE_NAMES))},
            "match": {"oneOf": [{"type": "null"}, _match()]},
            "action": {"$ref": "#/$defs/action"},
        },
        required=["action"],
    )


def _match() -> Schema:
    return _object(
        V.MATCH_KEYS,
        {
            "crawlers": _strings(),
            "operators": _strings(),
            "purposes": _strings(_enum(p.value for p in Purpose)),
            "kinds": _strings(_enum(k.value for k in Kind)),
            "identities": _strings(_enum(i.value for i in Identity)),
            "paths": _strings({"type": "string", "pattern": "^/"}),
            # Methods are matched in upper case; the loader accepts any case.
            "methods": _strings({"type": "string", "pattern": "^[A-Za-z]+$"}),
            "hosts": _strings(),
            "headers": {"type": "object", "minProperties": 1,
                        "additionalProperties": _header_condition()},
            "robots": _enum(V.ROBOTS_STATES),
        },
    )


def _header_condition() -> Schema:
    one_of_values = _object(V.HEADER_VALUE_KEYS, {k: {"type": "string"}
                                                  for k in V.HEADER_VALUE_KEYS})
    one_of_values.update(minProperties=1, maxProperties=1)
    return {"oneOf": [_enum(V.HEADER_STATES), one_of_values]}


def _action() -> Schema:
    settings: dict[str, Schema] = {
        "allow": {"type": "null"},
        "monitor": {"type": "null"},
        "block": {"oneOf": [{"type": "null"}, _block()]},
        "rate_limit": _rate_limit(),
        "require_license": _require_license(),
    }
    return {
        "oneOf": [
            _enum(V.SIMPLE_ACTIONS),
            _object(V.ACTIONS, settings) | {"minProperties": 1, "maxProperties": 1},
        ]
    }


def _block() -> Schema:
    return _object(
        V.BLOCK_KEYS,
        {
            "status": {"type": "integer", "minimum": V.BLOCK_STATUS_MIN,
                       "maximum": V.BLOCK_STATUS_MAX},
            "body": {"type": "string"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    )


def _rate_limit() -> Schema:
    return _object(
        V.RATE_LIMIT_KEYS,
        {
            "rate": {"oneOf": [{"type": "number", "exclusiveMinimum": 0},
                               {"type": "string", "pattern": V.RATE_PATTERN}]},
            "burst": {"type": "integer", "minimum": 1},
            "key": _enum(k.value for k in LimitKey),
        },
        required=["rate"],
    )


def _require_license() -> Schema:
    return _object(V.REQUIRE_LICENSE_KEYS, {"any_of": _strings()}, required=["any_of"])


def _host_section() -> Schema:
    return _object(
        V.HOST_SECTION_KEYS,
        {"hosts": _strings(), "rules": {"$ref": "#/$defs/rules"}},
        required=["hosts"],
    )
