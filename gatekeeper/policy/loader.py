"""YAML policy files into `core.model.Policy` values.

The text is composed into PyYAML nodes with the safe loader and never
constructed into Python objects by PyYAML, so no tag can build anything and
every value keeps its line number. The walk over the nodes collects every
problem, each naming file, line and dotted field, and raises them together as
one `PolicyError`: unknown keys (with a suggestion), duplicate keys (which
PyYAML would silently resolve to the last one), wrong types, unknown names
and words, globs and regexes that cannot be compiled.

The format is described in docs/policy.md; the keys and words live in
`gatekeeper.policy.vocabulary`, shared with the JSON Schema.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gatekeeper.core.catalog import Kind, Purpose
from gatekeeper.core.facts import Identity
from gatekeeper.core.globs import (
    GlobError,
    compile_host_glob,
    compile_path_glob,
    compile_regex,
    compile_value_glob,
)
from gatekeeper.core.model import (
    Action,
    Allow,
    Block,
    DeclarationSettings,
    HeaderMatch,
    HostSection,
    License,
    LicenseLimits,
    LimitKey,
    Match,
    Mode,
    Monitor,
    Pattern,
    Policy,
    Price,
    PricePer,
    RateLimit,
    RequireLicense,
    RobotsMode,
    Rule,
    SourceRef,
    UsageStatement,
)
from gatekeeper.errors import PolicyError, Problem
from gatekeeper.policy import vocabulary as V
from gatekeeper.vocabulary_loader import load_vocabularies

DEFAULT_POLICY_NAME = "<embedded default policy>"
DEFAULT_POLICY_RESOURCE = "default-policy.yaml"

_E = TypeVar("_E", bound=StrEnum)

_RATE = re.compile(V.RATE_PATTERN)
_LICENSE_NAME = re.compile(V.LICENSE_NAME_PATTERN)
_SURROGATES = re.compile("[\ud800-\udfff]")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token
_CORE_TAG = "tag:yaml.org,2002:"
# The tags PyYAML's resolver gives plain YAML. Any other tag was written explicitly.
_PLAIN_TAGS = frozenset(
    _CORE_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp", "seq", "map")
)
_NOT_TEXT = frozenset(_CORE_TAG + t for t in ("bool", "null"))


class _CountingLoader(yaml.SafeLoader):
    """The safe loader, refusing a document with more than `MAX_YAML_ALIASES` aliases
    (the "billion laughs" shape: each level of aliases multiplies the walk)."""

    aliases = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > V.MAX_YAML_ALIASES:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"more than {V.MAX_YAML_ALIASES} aliases (*name)", mark)
        return super().compose_node(parent, index)


class CatalogNames(Protocol):
    """What validation needs from the crawler catalog (`core.catalog.Catalog`)."""

    def get(self, name: str) -> Any: ...

    @property
    def names(self) -> frozenset[str]: ...

    @property
    def operators(self) -> frozenset[str]: ...  # case-folded


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file a load read (or tried to): what a watcher must look at for changes."""

    path: Path  # resolved
    digest: str | None  # sha256 of the bytes read; None when it could not be read


@dataclass(frozen=True, slots=True)
class PolicyRead:
    """Everything one load attempt produced, good or bad."""

    policy: Policy | None
    problems: tuple[Problem, ...]
    files: tuple[SourceFile, ...]


# -- entry points -------------------------------------------------------------------------


def load_policy_file(path: str | Path, catalog: CatalogNames) -> Policy:
    return valid_policy(read_policy_file(path, catalog))


def load_policy_text(
    text: str, source_name: str, catalog: CatalogNames, base_dir: str | Path | None = None
) -> Policy:
    """A policy from text; `base_dir` is where includes are found (none without it)."""
    context = _Context(catalog, Path(base_dir) if base_dir is not None else None)
    policy = _FileWalker(context, source_name, context.root_dir, ()).policy(text)
    return valid_policy(context.result(policy))


def load_default_policy(catalog: CatalogNames) -> Policy:
    """The policy embedded in the package (policies/default.yaml in the source tree)."""
    resource = resources.files("gatekeeper.data").joinpath(DEFAULT_POLICY_RESOURCE)
    return load_policy_text(resource.read_text("utf-8"), DEFAULT_POLICY_NAME, catalog)


def read_policy_file(path: str | Path, catalog: CatalogNames) -> PolicyRead:
    """Load without raising: the policy (None when invalid), the problems, and every
    file read, including included ones, so a watcher knows what to watch."""
    path = Path(path)
    context = _Context(catalog, path.parent)
    text = context.read(path, path, None, "", "")
    if text is None:
        return context.result(None)
    walker = _FileWalker(context, str(path), path.parent, (path.resolve(),))
    return context.result(walker.policy(text))


def valid_policy(read: PolicyRead) -> Policy:
    """The policy `read` produced; PolicyError with its problems when there is none."""
    if read.problems or read.policy is None:
        raise PolicyError(list(read.problems))
    return read.policy


# -- state shared by the main file and its includes ---------------------------------------


class _Context:
    def __init__(self, catalog: CatalogNames, root_dir: Path | None) -> None:
        self.catalog = catalog
        self.root_dir = root_dir
        self.problems: list[Problem] = []
        self.files: list[SourceFile] = []
        self.crawler_names = sorted(catalog.names)
        self.operator_names = sorted(catalog.operators)
        self.rule_names: dict[str, SourceRef] = {}

    def read(
        self, path: Path, shown: Path, node: Node | None, source: str, field: str
    ) -> str | None:
        """The file's text, recorded for the watcher. When it cannot be read, the
        problem is the file itself (main file) or the include line naming it."""
        reason = None
        try:
            # One byte more than allowed tells an oversized file without reading it all.
            with path.open("rb") as f:
                data = f.read(V.MAX_POLICY_FILE_BYTES + 1)
        except OSError as exc:
            self.files.append(SourceFile(path.resolve(), None))
            reason = exc.strerror or str(exc)
        else:
            self.files.append(SourceFile(path.resolve(), hashlib.sha256(data).hexdigest()))
            if len(data) > V.MAX_POLICY_FILE_BYTES:
                reason = f"larger than {V.MAX_POLICY_FILE_BYTES // 1024} KiB"
            else:
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError:
                    reason = "not UTF-8 text"
        if node is None:
            self.problems.append(Problem(str(shown), 0, "", f"cannot read policy file: {reason}"))
        else:
            self.problems.append(
                Problem(source, _line(node), field, f"cannot read {str(shown)!r}: {reason}")
            )
        return None

    def result(self, policy: Policy | None) -> PolicyRead:
        good = policy if not self.problems else None
        # By file (in the order they were first named), then by line: the walk
        # finds some problems (missing keys, duplicate names) after later lines.
        order: dict[str, int] = {}
        for problem in self.problems:
            order.setdefault(problem.file, len(order))
        problems = sorted(self.problems, key=lambda p: (order[p.file], p.line))
        return PolicyRead(good, tuple(problems), tuple(self.files))


# -- one file -----------------------------------------------------------------------------


class _FileWalker:
    """Walks the nodes of one file, building model values and recording problems."""

    def __init__(
        self, context: _Context, source: str, base_dir: Path | None, chain: tuple[Path, ...]
    ) -> None:
        self.ctx = context
        self.source = source
        self.base_dir = base_dir
        self.chain = chain  # resolved paths of the files including this one, for cycles
        self._constructor = SafeConstructor()

    # problems

    def error(self, node: Node | None, field: str, message: str) -> None:
        self.ctx.problems.append(Problem(self.source, _line(node), field, message))

    def ref(self, node: Node) -> SourceRef:
        return SourceRef(self.source, _line(node))

    # the document

    def compose(self, text: str) -> Node | None:
        try:
            root = yaml.compose(text, Loader=_CountingLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 0
            what = ", ".join(part for part in (exc.context, exc.problem) if part) or "invalid"
            self.ctx.problems.append(Problem(self.source, line, "", f"YAML syntax: {what}"))
            return None
        except yaml.reader.ReaderError as exc:  # a character YAML does not allow
            line = text.count("\n", 0, exc.position) + 1
            code = exc.character if isinstance(exc.character, int) else ord(exc.character)
            message = f"YAML: character U+{code:04X} is not allowed in YAML text"
            self.ctx.problems.append(Problem(self.source, line, "", message))
            return None
        except yaml.YAMLError as exc:
            self.ctx.problems.append(Problem(self.source, 0, "", f"YAML: {exc}"))
            return None
        except RecursionError:
            self.ctx.problems.append(Problem(self.source, 0, "", "YAML nested too deeply"))
            return None
        return root

    def policy(self, text: str) -> Policy | None:
        root = self.compose(text)
        if root is None:
            if not any(p.file == self.source for p in self.ctx.problems):
                self.error(None, "", "the policy file is empty; it needs at least 'version: 1'")
            return None
        top = self.mapping(root, "", V.TOP_KEYS)
        if top is None:
            return None
        self.version(top.get("version"), root)
        mode = self.choice(top["mode"], "mode", Mode) if "mode" in top else Mode.ENFORCE
        licenses = self.licenses(top.get("licenses"))
        names = frozenset(lic.name for lic in licenses)
        default: Action | None = Allow()
        if "default" in top:
            default = self.action(top["default"], "default", names)
        terms = V.DEFAULT_TERMS_URL
        if "license_terms_url" in top:
            terms = self.terms_url(top["license_terms_url"]) or terms
        rules = self.rules(top.get("rules"), "rules", names, "")
        rules.extend(self.includes(top.get("include"), names))
        sections = self.host_sections(top.get("hosts"), names)
        declarations = DeclarationSettings()
        if "declarations" in top:
            declarations = self.declarations(top["declarations"]) or declarations
        if mode is None or default is None:
            return None
        return Policy(
            rules=tuple(rules), mode=mode, default=default, host_sections=tuple(sections),
            licenses=tuple(licenses), license_terms_url=terms, declarations=declarations,
            version=V.VERSION, source=self.source,
        )

    def version(self, node: Node | None, root: Node) -> None:
        if node is None:
            self.error(root, "version", f"missing; this format is version {V.VERSION} "
                       f"(add 'version: {V.VERSION}')")
            return
        version = self.integer(node, "version")
        if version is not None and version != V.VERSION:
            self.error(node, "version", f"unsupported version {version}; this Gatekeeper "
                       f"reads version {V.VERSION}")

    def terms_url(self, node: Node) -> str | None:
        url = self.text(node, "license_terms_url")
        if url is None:
            return None
        # It is sent in a Link header: nothing that could end or split the header.
        if not url.startswith(("/", "https://", "http://")) or any(
            c.isspace() or c in '<>"' or not c.isprintable() for c in url
        ):
            self.error(node, "license_terms_url",
                       "expected a path starting with '/' or an http(s) URL, without spaces")
            return None
        return url

    # declarations

    def declarations(self, node: Node) -> DeclarationSettings | None:
        if _is_null(node):
            return None
        m = self.mapping(node, "declarations", V.DECLARATION_KEYS)
        if m is None:
            return None
        out = DeclarationSettings()
        if "robots_txt" in m:
            node = m["robots_txt"]
            if isinstance(node, ScalarNode) and node.tag == _CORE_TAG + "bool" and \
                    not SafeConstructor().construct_yaml_bool(node):
                mode: RobotsMode | None = RobotsMode.OFF  # YAML reads a bare `off` as false
            else:
                mode = self.choice(node, "declarations.robots_txt", RobotsMode)
            out = replace(out, robots_txt=mode or out.robots_txt)
        if "tdmrep" in m:
            flag = self.boolean(m["tdmrep"], "declarations.tdmrep")
            out = replace(out, tdmrep=out.tdmrep if flag is None else flag)
        if "content_usage" in m:
            flag = self.boolean(m["content_usage"], "declarations.content_usage")
            out = replace(out, content_usage=out.content_usage if flag is None else flag)
        if "usage" in m:
            statements = []
            for i, item in enumerate(self.sequence(m["usage"], "declarations.usage")):
                statement = self.usage_statement(item, f"declarations.usage[{i}]")
                if statement is not None:
                    statements.append(statement)
            out = replace(out, usage=tuple(statements))
        return out

    def usage_statement(self, node: Node, field: str) -> UsageStatement | None:
        words = load_vocabularies().aipref.names()
        m = self.mapping(node, field, (V.USAGE_PATHS_KEY, *words))
        if m is None:
            return None
        if V.USAGE_PATHS_KEY not in m:
            self.error(node, f"{field}.{V.USAGE_PATHS_KEY}", "missing; say which paths the "
                       "preferences are for (\"/**\" for the whole site)")
            return None
        paths = self.paths(m[V.USAGE_PATHS_KEY], f"{field}.{V.USAGE_PATHS_KEY}")
        values: list[tuple[str, bool]] = []
        for word in words:
            if word in m:
                value = self.preference(m[word], f"{field}.{word}")
                if value is not None:
                    values.append((word, value))
        if not any(word in m for word in words):
            self.error(node, field, "states no preference; give at least one of "
                       + ", ".join(words))
        if not values:
            return None
        return UsageStatement(paths, tuple(values), self.ref(node))

    def preference(self, node: Node, field: str) -> bool | None:
        """`y` or `n` as aipref writes them; YAML's yes/no/true/false are read too."""
        if isinstance(node, ScalarNode) and node.tag == _CORE_TAG + "bool":
            return bool(SafeConstructor().construct_yaml_bool(node))
        word = self.text(node, field)
        if word is None:
            return None
        if word not in V.USAGE_VALUES:
            self.error(node, field, _not_one_of(word, list(V.USAGE_VALUES)))
            return None
        return V.USAGE_VALUES[word]

    def boolean(self, node: Node, field: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == _CORE_TAG + "bool":
            return bool(SafeConstructor().construct_yaml_bool(node))
        self.error(node, field, "expected true or false")
        return None

    # generic node access

    def tagged(self, node: Node, field: str) -> bool:
        """Explicit tags (`!!python/...`, custom `!tags`) are refused outright: a policy
        is plain data, and nothing in it may ask a loader to build objects."""
        if node.tag in _PLAIN_TAGS:
            return False
        self.error(node, field or "(document)", f"YAML tags are not allowed ({node.tag})")
        return True

    def mapping(
        self, node: Node, field: str, allowed: Collection[str] | None
    ) -> dict[str, Node] | None:
        """The mapping's values by key; unknown and duplicate keys are problems."""
        if self.tagged(node, field):
            return None
        if not isinstance(node, MappingNode):
            self.error(node, field or "(document)", "expected a mapping of key: value")
            return None
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _CORE_TAG + "merge":
                self.error(key_node, field or "(document)", "YAML merge keys ('<<') are not "
                           "supported; repeat the settings instead")
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag != _CORE_TAG + "str":
                self.error(key_node, field or "(document)", "keys must be plain text")
                continue
            key = key_node.value
            where = f"{field}.{key}" if field else key
            if key in out:
                self.error(key_node, where, "duplicate key (YAML would silently keep only "
                           "the last one)")
            elif allowed is not None and key not in allowed:
                self.error(key_node, where, self.unknown_key(key, allowed))
            else:
                out[key] = value_node
        return out

    def unknown_key(self, key: str, allowed: Collection[str]) -> str:
        if allowed is V.INCLUDED_KEYS and key in V.TOP_KEYS:
            return f"not allowed in an included file (only {', '.join(V.INCLUDED_KEYS)})"
        return "unknown key" + _suggest(key, allowed)

    def sequence(self, node: Node, field: str) -> list[Node]:
        if self.tagged(node, field):
            return []
        if isinstance(node, SequenceNode):
            return list(node.value)
        if _is_null(node):
            return []
        self.error(node, field, "expected a list")
        return []

    def text(self, node: Node, field: str) -> str | None:
        """A scalar as text. Numbers are fine as text; YAML's yes/no/null are not,
        because the author almost certainly meant something else."""
        if self.tagged(node, field):
            return None
        if not isinstance(node, ScalarNode):
            self.error(node, field, "expected text")
            return None
        if node.tag in _NOT_TEXT:
            if node.value:
                self.error(node, field, f"expected text, got {node.value!r}; put it in "
                           "quotes if you meant the word")
            else:
                self.error(node, field, "expected text, got nothing")
            return None
        value = str(node.value)
        if _SURROGATES.search(value):
            # Only a "\udcxx" escape in a double-quoted string can produce one; such
            # text cannot be encoded, so no pattern or header could be built from it.
            self.error(node, field, "contains a lone surrogate escape (\\ud800-\\udfff)")
            return None
        return value

    def integer(self, node: Node, field: str) -> int | None:
        if self.tagged(node, field):
            return None
        if isinstance(node, ScalarNode) and node.tag == _CORE_TAG + "int":
            try:
                value = self._constructor.construct_object(node)
            except (ConstructorError, ValueError):
                value = None
            if isinstance(value, int):
                return value
        if isinstance(node, ScalarNode) and node.style and node.value.strip().isdigit():
            self.error(node, field, f"expected a whole number, got the text {node.value!r}; "
                       "remove the quotes")
        elif isinstance(node, ScalarNode):
            self.error(node, field, f"expected a whole number, got {node.value!r}")
        else:
            self.error(node, field, f"expected a whole number, got a {_node_kind(node)}")
        return None

    def choice(self, node: Node, field: str, enum: type[_E]) -> _E | None:
        word = self.text(node, field)
        if word is None:
            return None
        try:
            return enum(word)
        except ValueError:
            self.error(node, field, _not_one_of(word, [e.value for e in enum]))
            return None

    def items(
        self, node: Node, field: str, empty: str | None
    ) -> list[tuple[Node, str, str]]:
        """A list of text items as (node, field, text); one text is a one-item list.
        `empty` is the problem to report for an empty list (None: empty is fine)."""
        if isinstance(node, ScalarNode) and not _is_null(node):
            value = self.text(node, field)
            return [(node, field, value)] if value is not None else []
        if self.tagged(node, field):
            return []
        if not isinstance(node, SequenceNode | ScalarNode):
            self.error(node, field, "expected a list")
            return []
        if not node.value:  # an empty list, or nothing at all after the colon
            if empty is not None:
                self.error(node, field, empty)
            return []
        out = []
        for i, item in enumerate(node.value):
            value = self.text(item, f"{field}[{i}]")
            if value is not None:
                out.append((item, f"{field}[{i}]", value))
        return out

    # licences

    def licenses(self, node: Node | None) -> list[License]:
        out: list[License] = []
        if node is None:
            return out
        for i, item in enumerate(self.sequence(node, "licenses")):
            lic = self.license(item, f"licenses[{i}]")
            if lic is None:
                continue
            if any(other.name == lic.name for other in out):
                self.error(item, f"licenses[{i}].name", f"licence {lic.name!r} is declared twice")
                continue
            out.append(lic)
        return out

    def license(self, node: Node, field: str) -> License | None:
        m = self.mapping(node, field, V.LICENSE_KEYS)
        if m is None:
            return None
        if "name" not in m:
            self.error(node, f"{field}.name", "missing; every licence needs a name")
            return None
        name = self.text(m["name"], f"{field}.name")
        if name is not None and not _LICENSE_NAME.match(name):
            self.error(m["name"], f"{field}.name",
                       f"{name!r}: use letters, digits, '.', '_' and '-' only")
            name = None
        usages = []
        listed = self.items(m["usages"], f"{field}.usages", None) if "usages" in m else []
        for item, where, usage in listed:
            if usage in V.USAGES:
                usages.append(usage)
            else:
                self.error(item, where, _not_one_of(usage, V.USAGES))
        description = ""
        if "description" in m:
            description = self.text(m["description"], f"{field}.description") or ""
        paths = self.paths(m["paths"], f"{field}.paths") if "paths" in m else None
        price = self.price(m["price"], f"{field}.price") if "price" in m else None
        contact = ""
        if "contact" in m:
            contact = self.text(m["contact"], f"{field}.contact") or ""
            if contact and not contact.startswith(("mailto:", "https://", "http://")):
                self.error(m["contact"], f"{field}.contact",
                           f"{contact!r}: expected a mailto: or https: URL")
        validity = 30 * 86400.0
        if "validity" in m:
            validity = self.duration(m["validity"], f"{field}.validity") or validity
        limits = self.limits(m["limits"], f"{field}.limits") if "limits" in m else None
        if name is None:
            return None
        return License(name, tuple(usages), description, self.ref(node), paths, price,
                       contact, validity, limits)

    def price(self, node: Node, field: str) -> Price | None:
        m = self.mapping(node, field, V.PRICE_KEYS)
        if m is None:
            return None
        for key in ("amount", "currency"):
            if key not in m:
                self.error(node, f"{field}.{key}", "missing")
                return None
        amount_text = self.text(m["amount"], f"{field}.amount")
        currency = self.text(m["currency"], f"{field}.currency")
        per = PricePer.REQUEST
        if "per" in m:
            word = self.text(m["per"], f"{field}.per")
            if word is not None and word not in [p.value for p in PricePer]:
                self.error(m["per"], f"{field}.per", _not_one_of(word, [p.value for p in PricePer]))
                return None
            per = PricePer(word) if word is not None else per
        if amount_text is None or currency is None:
            return None
        try:
            amount = Decimal(amount_text)
        except InvalidOperation:
            amount = Decimal(-1)
        if not amount.is_finite() or amount < 0:
            self.error(m["amount"], f"{field}.amount",
                       f"{amount_text!r}: expected a decimal number, 0 or more")
            return None
        if not (len(currency) == 3 and currency.isalpha() and currency.isupper()):
            self.error(m["currency"], f"{field}.currency",
                       f"{currency!r}: expected an ISO 4217 code such as USD or EUR")
            return None
        return Price(amount, currency, per)

    def duration(self, node: Node, field: str) -> float | None:
        text = self.text(node, field)
        if text is None:
            return None
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
        if found is None or float(found.group(1)) <= 0:
            self.error(node, field, f"{text!r}: expected a duration such as 30d, 12h or 3600s")
            return None
        return float(found.group(1)) * V.DURATION_UNITS.get(found.group(2) or "s", 1.0)

    def limits(self, node: Node, field: str) -> LicenseLimits | None:
        m = self.mapping(node, field, V.LIMIT_KEYS)
        if m is None:
            return None
        period = PricePer.MONTH
        if "per" in m:
            word = self.text(m["per"], f"{field}.per")
            choices = ["day", "month", "year"]
            if word not in choices:
                self.error(m["per"], f"{field}.per", _not_one_of(str(word), choices))
                return None
            period = PricePer(word)
        requests = self.count(m["requests"], f"{field}.requests") if "requests" in m else None
        size = self.size(m["bytes"], f"{field}.bytes") if "bytes" in m else None
        if "requests" in m or "bytes" in m:
            if requests is None and size is None:
                return None  # the bad value is reported already
        elif requests is None and size is None:
            self.error(node, field, "give requests, bytes or both")
            return None
        return LicenseLimits(period, requests, size)

    def count(self, node: Node, field: str) -> int | None:
        text = self.text(node, field)
        if text is None:
            return None
        if not text.isdigit() or int(text) < 1:
            self.error(node, field, f"{text!r}: expected a whole number, 1 or more")
            return None
        return int(text)

    def size(self, node: Node, field: str) -> int | None:
        text = self.text(node, field)
        if text is None:
            return None
        found = re.fullmatch(r"\s*(\d+)\s*([KMGT]i?B|B)?\s*", text)
        if found is None or int(found.group(1)) < 1:
            self.error(node, field, f"{text!r}: expected a size such as 500MiB or 10GB")
            return None
        return int(found.group(1)) * V.SIZE_UNITS[found.group(2) or ""]

    # rules

    def rules(
        self, node: Node | None, field: str, licenses: frozenset[str], name_prefix: str
    ) -> list[Rule]:
        out: list[Rule] = []
        if node is None:
            return out
        for i, item in enumerate(self.sequence(node, field)):
            rule = self.rule(item, f"{field}[{i}]", licenses, name_prefix)
            if rule is not None:
                out.append(rule)
        return out

    def rule(
        self, node: Node, field: str, licenses: frozenset[str], name_prefix: str
    ) -> Rule | None:
        m = self.mapping(node, field, V.RULE_KEYS)
        if m is None:
            return None
        name = self.rule_name(m["name"], f"{field}.name") if "name" in m else None
        match = self.match(m["match"], f"{field}.match") if "match" in m else Match()
        if "action" not in m:
            self.error(node, f"{field}.action", "missing; say what to do: "
                       + ", ".join(V.ACTIONS))
            return None
        action = self.action(m["action"], f"{field}.action", licenses)
        if "name" in m and name is None:
            return None
        name = name if name is not None else name_prefix + field
        if not self.unique_rule_name(name, m.get("name", node), f"{field}.name"):
            return None
        if match is None or action is None:
            return None
        return Rule(name, match, action, self.ref(node))

    def rule_name(self, node: Node, field: str) -> str | None:
        name = self.text(node, field)
        if name is None:
            return None
        if not name.strip() or name != name.strip() or not name.isprintable():
            self.error(node, field, "a rule name is one line of printable text, "
                       "without leading or trailing spaces")
        elif len(name) > V.MAX_RULE_NAME:
            self.error(node, field, f"longer than {V.MAX_RULE_NAME} characters")
        elif name in V.RESERVED_RULE_NAMES:
            self.error(node, field, f"{name!r} is reserved: it names the outcome when no "
                       "rule matches")
        else:
            return name
        return None

    def unique_rule_name(self, name: str, node: Node, field: str) -> bool:
        first = self.ctx.rule_names.get(name)
        if first is not None:
            where = f"line {first.line}" if first.file == self.source else str(first)
            self.error(node, field, f"rule name {name!r} is already used at {where}")
            return False
        self.ctx.rule_names[name] = self.ref(node)
        return True

    # match conditions

    def match(self, node: Node, field: str) -> Match | None:
        if _is_null(node):
            return Match()
        m = self.mapping(node, field, V.MATCH_KEYS)
        if m is None:
            return None
        before = len(self.ctx.problems)
        conditions: dict[str, Any] = {}
        for key, value in m.items():
            if key == "robots":
                conditions["robots_disallowed"] = self.robots(value, f"{field}.{key}")
                continue
            conditions[key] = self._CONDITIONS[key](self, value, f"{field}.{key}")
        if len(self.ctx.problems) > before:
            return None
        return Match(**conditions)

    def crawlers(self, node: Node, field: str) -> frozenset[str]:
        out = set()
        for item, where, name in self.items(node, field, _EMPTY_CONDITION):
            crawler = self.ctx.catalog.get(name)
            if crawler is None:
                self.error(item, where, f"unknown crawler {name!r}"
                           + _suggest(name, self.ctx.crawler_names, casefold=True))
            else:
                out.add(str(crawler.name))
        return frozenset(out)

    def operators(self, node: Node, field: str) -> frozenset[str]:
        out = set()
        for item, where, name in self.items(node, field, _EMPTY_CONDITION):
            operator = name.casefold()
            if operator not in self.ctx.catalog.operators:
                self.error(item, where, f"no catalog crawler is operated by {name!r}"
                           + _suggest(operator, self.ctx.operator_names))
            out.add(operator)
        return frozenset(out)

    def enum_set(self, node: Node, field: str, enum: type[_E]) -> frozenset[_E]:
        out = set()
        choices = [e.value for e in enum]
        for item, where, word in self.items(node, field, _EMPTY_CONDITION):
            if word in choices:
                out.add(enum(word))
            else:
                self.error(item, where, _not_one_of(word, choices))
        return frozenset(out)

    def purposes(self, node: Node, field: str) -> frozenset[Purpose]:
        return self.enum_set(node, field, Purpose)

    def kinds(self, node: Node, field: str) -> frozenset[str]:
        return frozenset(k.value for k in self.enum_set(node, field, Kind))

    def identities(self, node: Node, field: str) -> frozenset[Identity]:
        return self.enum_set(node, field, Identity)

    def robots(self, node: Node, field: str) -> bool | None:
        word = self.text(node, field)
        if word is None:
            return None
        if word not in V.ROBOTS_STATES:
            self.error(node, field, _not_one_of(word, list(V.ROBOTS_STATES)))
            return None
        return word == "disallowed"

    def methods(self, node: Node, field: str) -> frozenset[str]:
        out = set()
        for item, where, word in self.items(node, field, _EMPTY_CONDITION):
            method = word.upper()
            if method in V.METHODS:
                out.add(method)
            else:
                self.error(item, where, f"unknown HTTP method {word!r}"
                           + _suggest(method, V.METHODS))
        return frozenset(out)

    def paths(self, node: Node, field: str) -> tuple[Pattern, ...]:
        return self.patterns(node, field, compile_path_glob)

    def hosts(self, node: Node, field: str) -> tuple[Pattern, ...]:
        return self.patterns(node, field, compile_host_glob)

    def patterns(
        self, node: Node, field: str, compile_glob: Callable[[str], Pattern]
    ) -> tuple[Pattern, ...]:
        out = []
        for item, where, text in self.items(node, field, _EMPTY_CONDITION):
            try:
                out.append(compile_glob(text))
            except GlobError as exc:
                self.error(item, where, f"bad glob {text!r}: {exc}")
        return tuple(out)

    def headers(self, node: Node, field: str) -> tuple[HeaderMatch, ...]:
        m = self.mapping(node, field, None)
        if m is None:
            return ()
        if not node.value:
            self.error(node, field, _EMPTY_CONDITION)
        out = []
        seen: set[str] = set()
        for name, value in m.items():
            where = f"{field}.{name}"
            if not _HEADER_NAME.match(name):
                self.error(value, where, f"{name!r} is not a valid header name")
            elif name.lower() in seen:
                self.error(value, where, "the same header, in other letter case, is "
                           "already listed (header names ignore case)")
            else:
                seen.add(name.lower())
                header = self.header(name, value, where)
                if header is not None:
                    out.append(header)
        return tuple(out)

    def header(self, name: str, node: Node, field: str) -> HeaderMatch | None:
        if isinstance(node, ScalarNode):
            state = self.text(node, field)
            if state in V.HEADER_STATES:
                return HeaderMatch(name, present=state == "present")
            if state is not None:
                self.error(node, field, "expected present, absent, or one of "
                           "{equals: ...}, {glob: ...}, {regex: ...}")
            return None
        before = len(self.ctx.problems)
        spec = self.mapping(node, field, V.HEADER_VALUE_KEYS)
        if spec is None or len(self.ctx.problems) > before:
            return None
        if len(spec) != 1:
            self.error(node, field, "give exactly one of " + ", ".join(V.HEADER_VALUE_KEYS))
            return None
        ((how, text_node),) = spec.items()
        text = self.text(text_node, f"{field}.{how}")
        if text is None:
            return None
        compile_value = _VALUE_COMPILERS[how]
        try:
            return HeaderMatch(name, present=True, value=compile_value(text))
        except GlobError as exc:
            self.error(text_node, f"{field}.{how}", str(exc))
            return None

    _CONDITIONS: dict[str, Callable[[_FileWalker, Node, str], Any]] = {
        "crawlers": crawlers, "operators": operators, "purposes": purposes, "kinds": kinds,
        "identities": identities, "paths": paths, "methods": methods, "hosts": hosts,
        "headers": headers,
    }

    # actions

    def action(self, node: Node, field: str, licenses: frozenset[str]) -> Action | None:
        if isinstance(node, ScalarNode):
            return self.simple_action(node, field)
        m = self.mapping(node, field, V.ACTIONS)
        if m is None:
            return None
        if len(m) != 1:
            self.error(node, field, "give exactly one action")
            return None
        ((kind, spec),) = m.items()
        where = f"{field}.{kind}"
        if kind in ("allow", "monitor"):
            if not _is_null(spec):
                self.error(spec, where, f"{kind} takes no settings")
                return None
            return Allow() if kind == "allow" else Monitor()
        if kind == "block":
            return self.block(spec, where)
        if kind == "rate_limit":
            return self.rate_limit(spec, where)
        return self.require_license(spec, where, licenses)

    def simple_action(self, node: ScalarNode, field: str) -> Action | None:
        word = self.text(node, field)
        if word is None:
            return None
        if word == "allow":
            return Allow()
        if word == "block":
            return Block()
        if word == "monitor":
            return Monitor()
        if word in V.ACTION_EXAMPLES:
            self.error(node, field, f"{word} needs settings, e.g. {V.ACTION_EXAMPLES[word]}")
        else:
            self.error(node, field, f"unknown action {word!r}" + _suggest(word, V.ACTIONS))
        return None

    def block(self, node: Node, field: str) -> Block | None:
        if _is_null(node):
            return Block()
        m = self.mapping(node, field, V.BLOCK_KEYS)
        if m is None:
            return None
        before = len(self.ctx.problems)
        block = Block()
        if "status" in m:
            status = self.block_status(m["status"], f"{field}.status")
            block = Block(status=status or block.status)
        if "body" in m:
            block = replace(block, body=self.text(m["body"], f"{field}.body"))
        if "headers" in m:
            headers = self.response_headers(m["headers"], f"{field}.headers")
            block = replace(block, headers=headers)
        return block if len(self.ctx.problems) == before else None

    def block_status(self, node: Node, field: str) -> int | None:
        status = self.integer(node, field)
        if status is not None and not V.BLOCK_STATUS_MIN <= status <= V.BLOCK_STATUS_MAX:
            self.error(node, field, f"a block answers with a 4xx or 5xx status, not {status}")
            return None
        return status

    def response_headers(self, node: Node, field: str) -> tuple[tuple[str, str], ...]:
        out = []
        for name, value_node in (self.mapping(node, field, None) or {}).items():
            where = f"{field}.{name}"
            value = self.text(value_node, where)
            if not _HEADER_NAME.match(name):
                self.error(value_node, where, f"{name!r} is not a valid header name")
            elif name.lower() in V.RESERVED_RESPONSE_HEADERS:
                self.error(value_node, where, f"{name} is set by the server, not the policy")
            elif value is not None and any(c in value for c in "\r\n\x00"):
                self.error(value_node, where, "CR, LF or NUL in a header value")
            elif value is not None:
                out.append((name, value))
        return tuple(out)

    def rate_limit(self, node: Node, field: str) -> RateLimit | None:
        m = self.mapping(node, field, V.RATE_LIMIT_KEYS)
        if m is None:
            return None
        if "rate" not in m:
            self.error(node, f"{field}.rate", "missing, e.g. rate: 60/min")
            return None
        rate = self.rate(m["rate"], f"{field}.rate")
        burst: int | None = max(1, round(rate)) if rate is not None else None
        if "burst" in m:
            burst = self.integer(m["burst"], f"{field}.burst")
            if burst is not None and burst < 1:
                self.error(m["burst"], f"{field}.burst", f"must be 1 or more, not {burst}")
                burst = None
        key: LimitKey | None = LimitKey.CRAWLER
        if "key" in m:
            key = self.choice(m["key"], f"{field}.key", LimitKey)
        if rate is None or burst is None or key is None:
            return None
        return RateLimit(rate=rate, burst=burst, key=key)

    def rate(self, node: Node, field: str) -> float | None:
        """Requests per second from "N/s", "N/min", "N/h" or a bare number (per second)."""
        text = self.text(node, field)
        if text is None:
            return None
        found = _RATE.match(text)
        if found is None or float(found.group(1)) <= 0:
            self.error(node, field, f"{text!r} is not a rate: use N/s, N/min, N/h or a "
                       "number per second, greater than 0")
            return None
        unit = found.group(2)
        return float(found.group(1)) / (V.RATE_UNITS[unit] if unit else 1.0)

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
        before = len(self.ctx.problems)
        for item, where, name in self.items(m["any_of"], f"{field}.any_of",
                                            "list at least one licence"):
            if name not in licenses:
                self.error(item, where, f"licence {name!r} is not declared under 'licenses'"
                           + _suggest(name, sorted(licenses)))
            names.append(name)
        if len(self.ctx.problems) > before:
            return None
        return RequireLicense(tuple(dict.fromkeys(names)))

    # host sections

    def host_sections(self, node: Node | None, licenses: frozenset[str]) -> list[HostSection]:
        out: list[HostSection] = []
        if node is None:
            return out
        for i, item in enumerate(self.sequence(node, "hosts")):
            where = f"hosts[{i}]"
            m = self.mapping(item, where, V.HOST_SECTION_KEYS)
            if m is None:
                continue
            if "hosts" not in m:
                self.error(item, f"{where}.hosts", "missing: which hosts this section is for")
                continue
            hosts = self.hosts(m["hosts"], f"{where}.hosts")
            rules = self.rules(m.get("rules"), f"{where}.rules", licenses, "")
            out.append(HostSection(hosts, tuple(rules)))
        return out

    # includes

    def includes(self, node: Node | None, licenses: frozenset[str]) -> list[Rule]:
        out: list[Rule] = []
        if node is None:
            return out
        for item, where, name in self.items(node, "include", None):
            out.extend(self.include(item, where, name, licenses))
        return out

    def include(self, node: Node, field: str, name: str, licenses: frozenset[str]) -> list[Rule]:
        if self.base_dir is None:
            self.error(node, field, "includes need a policy loaded from a file")
            return []
        path = self.base_dir / name
        resolved = path.resolve()
        if resolved in self.chain:
            self.error(node, field, f"{name!r} is already being included (an include cycle)")
            return []
        if len(self.ctx.files) >= V.MAX_INCLUDED_FILES:
            self.error(node, field, f"more than {V.MAX_INCLUDED_FILES} files included")
            return []
        shown = Path(os.path.normpath(path))
        text = self.ctx.read(path, shown, node, self.source, field)
        if text is None:
            return []
        walker = _FileWalker(self.ctx, str(shown), path.parent, (*self.chain, resolved))
        return walker.included_rules(text, licenses, self.rule_prefix(shown))

    def rule_prefix(self, shown: Path) -> str:
        """Default names of included rules say which file they are from: "extra.yaml:rules[0]"."""
        root = self.ctx.root_dir
        relative = os.path.relpath(shown, root) if root is not None else str(shown)
        return Path(relative).as_posix() + ":"

    def included_rules(self, text: str, licenses: frozenset[str], prefix: str) -> list[Rule]:
        root = self.compose(text)  # None: a YAML problem, or an empty file (no rules)
        m = self.mapping(root, "", V.INCLUDED_KEYS) if root is not None else None
        if m is None:
            return []
        if "version" in m:
            self.version(m["version"], m["version"])
        rules = self.rules(m.get("rules"), "rules", licenses, prefix)
        rules.extend(self.includes(m.get("include"), licenses))
        return rules


# -- small helpers ------------------------------------------------------------------------

_EMPTY_CONDITION = "an empty list matches nothing; remove the condition instead"
_VALUE_COMPILERS: dict[str, Callable[[str], Pattern]] = {
    "equals": lambda text: Pattern(text, text.__eq__),
    "glob": compile_value_glob,
    "regex": compile_regex,
}


def _line(node: Node | None) -> int:
    return node.start_mark.line + 1 if node is not None and node.start_mark else 0


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _CORE_TAG + "null"


def _node_kind(node: Node) -> str:
    return "mapping" if isinstance(node, MappingNode) else "list"


def _not_one_of(word: str, choices: Iterable[str]) -> str:
    pool = list(choices)
    return f"{word!r} is not one of {', '.join(pool)}" + _suggest(word, pool)


def _suggest(word: str, choices: Iterable[str], casefold: bool = False) -> str:
    pool = list(choices)
    if casefold:
        folded = {c.casefold(): c for c in pool}
        close = difflib.get_close_matches(word.casefold(), list(folded), n=1, cutoff=0.6)
        return f"; did you mean {folded[close[0]]!r}?" if close else ""
    close = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""

