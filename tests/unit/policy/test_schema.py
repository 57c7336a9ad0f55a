from gatekeeper.policy import vocabulary as V
from gatekeeper.policy.schema import json_schema


def test_schema_covers_exactly_the_loaders_vocabulary() -> None:
    schema = json_schema()
    assert set(schema["properties"]) == set(V.TOP_KEYS)
    rule = schema["$defs"]["rule"]
    assert set(rule["properties"]) == set(V.RULE_KEYS)
    match = rule["properties"]["match"]["oneOf"][1]
    assert set(match["properties"]) == set(V.MATCH_KEYS)
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["version"]
