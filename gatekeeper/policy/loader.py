"""YAML policy files into `core.model.Policy` values.

The file is composed into PyYAML nodes with the safe loader (no object
construction at all), so every value keeps its line number. The walk collects
every problem it finds, each naming file, line and field, and raises them
together as one `PolicyError`. Unknown keys, duplicate keys, wrong types,
unknown crawler names and regexes RE2 cannot run are all errors.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gatekeeper.core.catalog import Kind, Purpose
from gatekeeper.core.facts import Identity
from gatekeeper.core.globs import GlobError, compile_host_glob, compile_path_glob
from gatekeeper.core.model import (
    Action,
    Allow,
    Block,
    HeaderMatch,
    HostSection,
    License,
    LimitKey,
    Match,
    Mode,
    Monitor,
    Pattern,
    Policy,
    RateLimit,
    RequireLicense,
    Rule,
    SourceRef,
)
from gatekeeper.errors import PolicyError, Problem
from gatekeeper.policy import vocabulary as V

DEFAULT_POLICY_NAME = "<embedded default policy>"
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$")
_PER = {None: 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0,
        "minute": 60.0, "h": 3600.0, "hour": 3600.0}
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class CatalogNames(Protocol):
    """What validation needs from the catalog."""

    def get(self, name: str) -> Any: ...

    @property
    def names(self) -> frozenset[str]: ...

    @property
    def operators(self) -> frozenset[str]: ...


def load_policy_file(path: str | Path, catalog: CatalogNames) -> Policy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        problem = Problem(str(path), 0, "", f"cannot read policy file: {reason}")
        raise PolicyError([problem]) from exc
    return load_policy_text(text, str(path), catalog, base_dir=path.parent)


def load_default_policy(catalog: CatalogNames) -> Policy:
    text = resources.files("gatekeeper.data").joinpath("default-policy.yaml").read_text("utf-8")
    return load_policy_text(text, DEFAULT_POLICY_NAME, catalog)


def load_policy_text(
    text: str, source: str, catalog: CatalogNames, base_dir: Path | None = None
) -> Policy:
    builder = _Builder(source, catalog, base_dir, seen=(source,))
    policy = builder.policy(text)
    if builder.problems or policy is None:
        raise PolicyError(builder.problems)
    return policy


def policy_files(path: str | Path) -> list[Path]:
    """The file and every file it includes, for change watching."""
    out: list[Path] = []
    todo = [Path(path)]
    while todo:
        file = todo.pop()
        if file in out:
            continue
        out.append(file)
        try:
            doc = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("include"), list):
            todo.extend(file.parent / str(inc) for inc in doc["include"])
    return out


class _Builder:
    def __init__(
        self, source: str, catalog: CatalogNames, base_dir: Path | None, seen: tuple[str, ...]
    ) -> None:
        self.source = source
        self.catalog = catalog
        self.base_dir = base_dir
        self.seen = seen
        self.problems: list[Problem] = []
        self._catalog_names = sorted(catalog.names)

    # -- problems ---------------------------------------------------------------------------
    def error(self, node: Node | None, field: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.problems.append(Problem(self.source, line, field, message))

    # -- document ---------------------------------------------------------------------------
    def policy(self, text: str) -> Policy | None:
        root = self._compose(text)
        if root is None:
            return None
        top = self.mapping(root, "", V.TOP_KEYS)
        if top is None:
            return None
        version = top.get("version")
        if version is None:
            self.error(root, "version", "missing; this format is version 1 (add 'version: 1')")
        elif self.scalar(version, "version", int) != 1:
            self.error(version, "version", "unsupported version; this Gatekeeper reads version 1")
        mode = Mode.ENFORCE
        if "mode" in top:
            mode = self.enum(top["mode"], "mode", Mode) or Mode.ENFORCE
        default: Action = Allow()
        if "default" in top:
            default = self.action(top["default"], "default", frozenset()) or Allow()
        licenses = self.licenses(top.get("licenses"))
        names = frozenset(lic.name for lic in licenses)
        rules = self.rules(top.get("rules"), "rules", names)
        for inc_rules in self.includes(top.get("include"), names):
            rules.extend(inc_rules)
        self.unique_rule_names(rules)
        sections = self.host_sections(top.get("hosts"), names)
        terms = V.DEFAULT_TERMS_URL
        if "license_terms_url" in top:
            terms = self.scalar(top["license_terms_url"], "license_terms_url", str) or terms
        return Policy(
            rules=tuple(rules), mode=mode, default=default, host_sections=tuple(sections),
            licenses=tuple(licenses), license_terms_url=terms, source=self.source,
        )

    def _compose(self, text: str) -> Node | None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            line = mark.line + 1 if mark is not None else 0
            self.problems.append(Problem(self.source, line, "", f"YAML syntax: {exc.problem}"))
            return None
        except yaml.YAMLError as exc:
            self.problems.append(Problem(self.source, 0, "", f"YAML: {exc}"))
            return None
        if root is None:
            self.problems.append(Problem(self.source, 1, "", "the policy file is empty"))
        return root

    # -- generic node access ----------------------------------------------------------------
    def tagged(self, node: Node, field: str) -> bool:
        """Explicit tags (`!!python/...`, custom `!tags`) are refused outright: a policy is
        plain data, and nothing in it may ask a loader to build objects."""
        if node.tag in _PLAIN_TAGS:
            return False
        self.error(node, field or "(document)", f"YAML tags are not allowed ({node.tag})")
        return True

    def mapping(
        self, node: Node, field: str, allowed: frozenset[str] | None
    ) -> dict[str, Node] | None:
        if self.tagged(node, field):
            return None
        if not isinstance(node, MappingNode):
            self.error(node, field or "(document)", "expected a mapping of key: value")
            return None
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            where = f"{field}.{key}" if field else str(key)
            if not isinstance(key, str):
                self.error(key_node, field, "keys must be plain strings")
                continue
            if key in out:
                self.error(key_node, where, "duplicate key (the earlier value would be ignored)")
                continue
            if allowed is not None and key not in allowed:
                self.error(key_node, where, "unknown key" + _suggest(key, allowed))
                continue
            out[key] = value_node
        return out

    def sequence(self, node: Node, field: str) -> list[Node]:
        if self.tagged(node, field):
            return []
        if isinstance(node, SequenceNode):
            return list(node.value)
        if isinstance(node, ScalarNode) and node.tag.endswith(":null"):
            return []
        self.error(node, field, "expected a list")
        return []

    def scalar(self, node: Node, field: str, kind: type) -> Any:
        if self.tagged(node, field):
            return None
        if not isinstance(node, ScalarNode):
            self.error(node, field, f"expected {_KIND_NAMES[kind]}")
            return None
        tag = node.tag.rsplit(":", 1)[-1]
        value: Any = node.value
        if kind is str:
            if tag in ("str",):
                return value
            if tag in ("int", "float"):
                return value  # a number where text is expected is fine as text
            self.error(node, field, f"expected {_KIND_NAMES[kind]}, got {tag}")
            return None
        if kind is int and tag == "int":
            return int(value, 0) if value.isascii() else None
        if kind is float and tag in ("int", "float"):
            return float(value)
        if kind is bool and tag == "bool":
            return value.lower() in ("true", "yes", "on")
        self.error(node, field, f"expected {_KIND_NAMES[kind]}, got {node.value!r}")
        return None

    def strings(self, node: Node, field: str) -> list[tuple[Node, str]]:
        """A list of strings; a single string is accepted as a one-item list."""
        items = [node] if isinstance(node, ScalarNode) else self.sequence(node, field)
        out: list[tuple[Node, str]] = []
        for i, item in enumerate(items):
            where = f"{field}[{i}]" if isinstance(node, SequenceNode) else field
            value = self.scalar(item, where, str)
            if value is not None:
                out.append((item, str(value)))
        if not items and isinstance(node, SequenceNode):
            self.error(node, field, "an empty list matches nothing; remove the condition instead")
        return out

    def enum(self, node: Node, field: str, enum: Any) -> Any:
        value = self.scalar(node, field, str)
        if value is None:
            return None
        try:
            return enum(value)
        except ValueError:
            choices = [e.value for e in enum]
            self.error(node, field, f"{value!r} is not one of {', '.join(choices)}"
                       + _suggest(value, choices))
            return None

    # -- licences ---------------------------------------------------------------------------
    def licenses(self, node: Node | None) -> list[License]:
        if node is None:
            return []
        out: list[License] = []
        for i, item in enumerate(self.sequence(node, "licenses")):
            where = f"licenses[{i}]"
            m = self.mapping(item, where, V.LICENSE_KEYS)
            if m is None:
                continue
            if "name" not in m:
                self.error(item, f"{where}.name", "missing; every licence needs a name")
                continue
            name = self.scalar(m["name"], f"{where}.name", str)
            usages: list[str] = []
            if "usages" in m:
                for n, usage in self.strings(m["usages"], f"{where}.usages"):
                    if usage not in V.USAGES:
                        self.error(n, f"{where}.usages", f"{usage!r} is not one of "
                                   f"{', '.join(V.USAGES)}" + _suggest(usage, V.USAGES))
                    usages.append(usage)
            description = ""
            if "description" in m:
                description = self.scalar(m["description"], f"{where}.description", str) or ""
            if name is None:
                continue
            if any(lic.name == name for lic in out):
                self.error(m["name"], f"{where}.name", f"licence {name!r} is declared twice")
                continue
            out.append(License(name, tuple(usages), description, self.ref(item)))
        return out

    # -- rules ------------------------------------------------------------------------------
    def rules(self, node: Node | None, field: str, licenses: frozenset[str]) -> list[Rule]:
        if node is None:
            return []
        out: list[Rule] = []
        for i, item in enumerate(self.sequence(node, field)):
            rule = self.rule(item, f"{field}[{i}]", licenses)
            if rule is not None:
                out.append(rule)
        return out

    def rule(self, node: Node, field: str, licenses: frozenset[str]) -> Rule | None:
        m = self.mapping(node, field, V.RULE_KEYS)
        if m is None:
            return None
        name = field
        if "name" in m:
            name = self.scalar(m["name"], f"{field}.name", str) or field
        match = self.match(m["match"], f"{field}.match") if "match" in m else Match()
        if "action" not in m:
            self.error(node, f"{field}.action", "missing; say what to do: allow, block, "
                       "rate_limit, require_license or monitor")
            return None
        action = self.action(m["action"], f"{field}.action", licenses)
        if match is None or action is None:
            return None
        return Rule(str(name), match, action, self.ref(node))

    def unique_rule_names(self, rules: list[Rule]) -> None:
        seen: dict[str, Rule] = {}
        for rule in rules:
            if rule.name in seen:
                first = seen[rule.name].source
                self.problems.append(Problem(
                    rule.source.file if rule.source else self.source,
                    rule.source.line if rule.source else 0,
                    "name", f"rule name {rule.name!r} is already used at {first}",
                ))
            else:
                seen[rule.name] = rule

    def ref(self, node: Node) -> SourceRef:
        return SourceRef(self.source, node.start_mark.line + 1)

    def match(self, node: Node, field: str) -> Match | None:
        if isinstance(node, ScalarNode) and node.tag.endswith(":null"):
            return Match()
        m = self.mapping(node, field, V.MATCH_KEYS)
        if m is None:
            return None
        before = len(self.problems)
        kw: dict[str, Any] = {}
        if "crawlers" in m:
            kw["crawlers"] = frozenset(self.crawler_names(m["crawlers"], f"{field}.crawlers"))
        if "operators" in m:
            ops = set()
            for n, op in self.strings(m["operators"], f"{field}.operators"):
                if op.casefold() not in self.catalog.operators:
                    self.error(n, f"{field}.operators", f"no catalog crawler is operated by "
                               f"{op!r}" + _suggest(op, sorted(self.catalog.operators)))
                ops.add(op.casefold())
            kw["operators"] = frozenset(ops)
        if "purposes" in m:
            kw["purposes"] = self.enum_set(m["purposes"], f"{field}.purposes", Purpose)
        if "kinds" in m:
            kw["kinds"] = frozenset(k.value for k in
                                    self.enum_set(m["kinds"], f"{field}.kinds", Kind))
        if "identities" in m:
            kw["identities"] = self.enum_set(m["identities"], f"{field}.identities", Identity)
        if "methods" in m:
            methods = set()
            for n, method in self.strings(m["methods"], f"{field}.methods"):
                if not re.fullmatch(r"[A-Za-z]+", method):
                    self.error(n, f"{field}.methods", f"{method!r} is not an HTTP method")
                methods.add(method.upper())
            kw["methods"] = frozenset(methods)
        if "paths" in m:
            kw["paths"] = self.globs(m["paths"], f"{field}.paths", compile_path_glob)
        if "hosts" in m:
            kw["hosts"] = self.globs(m["hosts"], f"{field}.hosts", compile_host_glob)
        if "headers" in m:
            kw["headers"] = self.header_matches(m["headers"], f"{field}.headers")
        if len(self.problems) > before:
            return None
        return Match(**kw)

    def crawler_names(self, node: Node, field: str) -> list[str]:
        out = []
        for n, name in self.strings(node, field):
            crawler = self.catalog.get(name)
            if crawler is None:
                self.error(n, field, f"unknown crawler {name!r}"
                           + _suggest(name, self._catalog_names, casefold=True)
                           + " (see docs/catalog.md)")
                continue
            out.append(crawler.name)
        return out

    def enum_set(self, node: Node, field: str, enum: Any) -> frozenset[Any]:
        out = set()
        for n, value in self.strings(node, field):
            try:
                out.add(enum(value))
            except ValueError:
                choices = [e.value for e in enum]
                self.error(n, field, f"{value!r} is not one of {', '.join(choices)}"
                           + _suggest(value, choices))
        return frozenset(out)

    def globs(
        self, node: Node, field: str, compile_glob: Callable[[str], Pattern]
    ) -> tuple[Pattern, ...]:
        out = []
        for n, text in self.strings(node, field):
            try:
                out.append(compile_glob(text))
            except GlobError as exc:
                self.error(n, field, f"bad glob {text!r}: {exc}")
        return tuple(out)

    def header_matches(self, node: Node, field: str) -> tuple[HeaderMatch, ...]:
        m = self.mapping(node, field, None)
        if m is None:
            return ()
        out = []
        for name, value in m.items():
            where = f"{field}.{name}"
            if not _HEADER_NAME.match(name):
                self.error(value, where, "not a valid header name")
                continue
            if isinstance(value, ScalarNode):
                word = self.scalar(value, where, str)
                if word not in ("present", "absent"):
                    self.error(value, where, "expected present, absent, or one of "
                               "{equals: ...}, {glob: ...}, {regex: ...}")
                    continue
                out.append(HeaderMatch(name, present=word == "present"))
                continue
            spec = self.mapping(value, where, V.HEADER_VALUE_KEYS)
            if spec is None:
                continue
            if len(spec) != 1:
                self.error(value, where, "give exactly one of equals, glob or regex")
                continue
            (how, text_node), = spec.items()
            text = self.scalar(text_node, f"{where}.{how}", str)
            if text is None:
                continue
            pattern = self.header_pattern(how, str(text), text_node, f"{where}.{how}")
            if pattern is not None:
                out.append(HeaderMatch(name, present=True, value=pattern))
        return tuple(out)

    def header_pattern(self, how: str, text: str, node: Node, field: str) -> Pattern | None:
        if how == "equals":
            return Pattern(text, text.__eq__)
        if how == "glob":
            # Header globs: "*" is any run of characters; nothing else is special.
            parts = [re.escape(p) for p in text.split("*")]
            if len(parts) > 9:
                self.error(node, field, "more than 8 '*' in one glob")
                return None
            regex = re.compile(".*".join(parts), re.DOTALL)
            return Pattern(text, lambda v: regex.fullmatch(v) is not None)
        import re2

        try:
            compiled = re2.compile(text)
        except re2.error as exc:
            self.error(node, field, f"RE2 cannot compile {text!r}: {exc} (policy regexes run "
                       "on RE2, which has no backreferences or lookaround)")
            return None
        return Pattern(text, lambda v: compiled.search(v) is not None)

    # -- actions ----------------------------------------------------------------------------
    def action(self, node: Node, field: str, licenses: frozenset[str]) -> Action | None:
        if isinstance(node, ScalarNode):
            word = self.scalar(node, field, str)
            if word is None:
                return None
            simple: dict[str, Action] = {"allow": Allow(), "block": Block(), "monitor": Monitor()}
            if word in simple:
                return simple[word]
            if word in ("rate_limit", "require_license"):
                self.error(node, field, f"{word} needs settings, e.g. "
                           + V.ACTION_EXAMPLES[word])
                return None
            self.error(node, field, f"unknown action {word!r}" + _suggest(word, V.ACTIONS))
            return None
        m = self.mapping(node, field, V.ACTIONS)
        if m is None:
            return None
        if len(m) != 1:
            self.error(node, field, "give exactly one action")
            return None
        (kind, spec), = m.items()
        where = f"{field}.{kind}"
        if kind in ("allow", "monitor"):
            if not (isinstance(spec, ScalarNode) and spec.tag.endswith(":null")):
                self.error(spec, where, f"{kind} takes no settings")
            return Allow() if kind == "allow" else Monitor()
        if kind == "block":
            return self.block(spec, where)
        if kind == "rate_limit":
            return self.rate_limit(spec, where)
        return self.require_license(spec, where, licenses)

    def block(self, node: Node, field: str) -> Block | None:
        if isinstance(node, ScalarNode) and node.tag.endswith(":null"):
            return Block()
        m = self.mapping(node, field, V.BLOCK_KEYS)
        if m is None:
            return None
        status = 403
        if "status" in m:
            status = self.scalar(m["status"], f"{field}.status", int) or 403
            if not 400 <= status <= 599:
                self.error(m["status"], f"{field}.status", "a block answers with a 4xx or 5xx "
                           f"status, not {status}")
        body = None
        if "body" in m:
            body = self.scalar(m["body"], f"{field}.body", str)
        headers: list[tuple[str, str]] = []
        if "headers" in m:
            hm = self.mapping(m["headers"], f"{field}.headers", None) or {}
            for name, vnode in hm.items():
                value = self.scalar(vnode, f"{field}.headers.{name}", str)
                if not _HEADER_NAME.match(name):
                    self.error(vnode, f"{field}.headers.{name}", "not a valid header name")
                elif value is not None and any(c in str(value) for c in "\r\n\x00"):
                    self.error(vnode, f"{field}.headers.{name}", "CR, LF or NUL in a value")
                elif value is not None:
                    headers.append((name, str(value)))
        return Block(status=status, body=None if body is None else str(body),
                     headers=tuple(headers))

    def rate_limit(self, node: Node, field: str) -> RateLimit | None:
        m = self.mapping(node, field, V.RATE_LIMIT_KEYS)
        if m is None:
            return None
        if "rate" not in m:
            self.error(node, f"{field}.rate", "missing, e.g. rate: 60/min")
            return None
        raw = self.scalar(m["rate"], f"{field}.rate", str)
        rate = None
        if raw is not None:
            found = _RATE.match(str(raw))
            if found is None or float(found.group(1)) <= 0:
                self.error(m["rate"], f"{field}.rate", f"{raw!r} is not a rate: use N/s, N/min, "
                           "N/h or a number per second, greater than 0")
            else:
                rate = float(found.group(1)) / _PER[found.group(2)]
        burst = 1
        if "burst" in m:
            burst = self.scalar(m["burst"], f"{field}.burst", int) or 0
            if burst < 1:
                self.error(m["burst"], f"{field}.burst", "must be a whole number of 1 or more")
        elif rate is not None:
            burst = max(1, round(rate))
        key = LimitKey.CRAWLER
        if "key" in m:
            key = self.enum(m["key"], f"{field}.key", LimitKey) or key
        if rate is None or burst < 1:
            return None
        return RateLimit(rate=rate, burst=burst, key=key)

    def require_license(
        self, node: Node, field: str, licenses: frozenset[str]
    ) -> RequireLicense | None:
        m = self.mapping(node, field, V.REQUIRE_LICENSE_KEYS)
        if m is None:
            return None
        if "any_of" not in m:
            self.error(node, f"{field}.any_of", "missing: list the licences that grant access")
            return None
        names = []
        for n, name in self.strings(m["any_of"], f"{field}.any_of"):
            if name not in licenses:
                self.error(n, f"{field}.any_of", f"licence {name!r} is not declared under "
                           "'licenses'" + _suggest(name, sorted(licenses)))
            names.append(name)
        return RequireLicense(tuple(names))

    # -- hosts and includes -----------------------------------------------------------------
    def host_sections(self, node: Node | None, licenses: frozenset[str]) -> list[HostSection]:
        if node is None:
            return []
        out = []
        for i, item in enumerate(self.sequence(node, "hosts")):
            where = f"hosts[{i}]"
            m = self.mapping(item, where, V.HOST_SECTION_KEYS)
            if m is None:
                continue
            if "hosts" not in m:
                self.error(item, f"{where}.hosts", "missing: which hosts this section is for")
                continue
            hosts = self.globs(m["hosts"], f"{where}.hosts", compile_host_glob)
            rules = self.rules(m.get("rules"), f"{where}.rules", licenses)
            out.append(HostSection(hosts, tuple(rules)))
        return out

    def includes(self, node: Node | None, licenses: frozenset[str]) -> list[list[Rule]]:
        if node is None:
            return []
        out = []
        for n, name in self.strings(node, "include"):
            if self.base_dir is None:
                self.error(n, "include", "includes need a policy loaded from a file")
                continue
            path = (self.base_dir / name).resolve()
            if str(path) in self.seen:
                self.error(n, "include", f"{name!r} includes itself (cycle)")
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                self.error(n, "include", f"cannot read {name!r}: {exc.strerror}")
                continue
            sub = _Builder(str(path), self.catalog, path.parent, (*self.seen, str(path)))
            out.append(sub.included_rules(text, licenses))
            self.problems.extend(sub.problems)
        return out

    def included_rules(self, text: str, licenses: frozenset[str]) -> list[Rule]:
        root = self._compose(text)
        if root is None:
            return []
        m = self.mapping(root, "", V.INCLUDE_KEYS)
        if m is None:
            return []
        rules = self.rules(m.get("rules"), "rules", licenses)
        for more in self.includes(m.get("include"), licenses):
            rules.extend(more)
        return rules


_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")
)
_KIND_NAMES: dict[type, str] = {
    str: "text", int: "a whole number", float: "a number", bool: "true or false",
}


def _suggest(word: str, choices: Any, casefold: bool = False) -> str:
    pool = list(choices)
    if casefold:
        lowered = {c.casefold(): c for c in pool}
        close = difflib.get_close_matches(word.casefold(), list(lowered), n=1, cutoff=0.6)
        return f"; did you mean {lowered[close[0]]!r}?" if close else ""
    close = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
