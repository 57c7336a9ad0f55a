"""`gatekeeper declarations`, `check --robots-txt` and the declarations in `explain`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gatekeeper.core.robots import RobotsRules
from tests.unit.test_cli import ROOT, gk

GPTBOT = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2)"


def test_declarations_prints_every_document_for_the_default_policy() -> None:
    out = gk("declarations", "--host", "news.example")
    assert out.returncode == 0, out.stderr
    for title in ("==> https://news.example/robots.txt",
                  "==> https://news.example/.well-known/tdmrep.json",
                  "==> https://news.example/license.xml", "==> response headers, by path"):
        assert title in out.stdout
    assert "User-agent: GPTBot\n" in out.stdout
    assert "Content-Signal: search=yes, ai-input=yes, ai-train=no" in out.stdout


def test_declarations_only_robots_txt_merges_the_given_origin_file(tmp_path: Path) -> None:
    origin = tmp_path / "robots.txt"
    origin.write_text("User-agent: *\nDisallow: /private/\n")
    out = gk("declarations", "--only", "robots.txt", "--robots-txt", str(origin))
    assert out.returncode == 0, out.stderr
    rules = RobotsRules.parse(out.stdout.encode())
    assert not rules.verdict("GPTBot", "/a").allowed
    assert not rules.verdict("Googlebot", "/private/a").allowed
    assert rules.verdict("Googlebot", "/a").allowed


def test_declarations_only_tdmrep_is_json_for_a_licence_policy() -> None:
    out = gk("declarations", "--only", "tdmrep.json", "--policy",
             str(ROOT / "policies" / "examples" / "license-first.yaml"))
    assert out.returncode == 0, out.stderr
    rules = json.loads(out.stdout)
    # TDMRep's policy is the terms page (HTML), not the RSL document.
    assert rules[-1] == {"location": "/", "tdm-reservation": 1,
                         "tdm-policy": "https://localhost/.well-known/gatekeeper/licenses"}


def test_declarations_headers_name_the_terms_page_and_link_the_rsl_document() -> None:
    out = gk("declarations", "--only", "headers", "--policy",
             str(ROOT / "policies" / "examples" / "license-first.yaml"))
    assert out.returncode == 0, out.stderr
    root = next(line for line in out.stdout.splitlines() if line.startswith("/ "))
    assert "tdm-policy: https://localhost/.well-known/gatekeeper/licenses" in root
    assert 'Link: <https://localhost/license.xml>; rel="license"' in root


def test_declarations_headers_list_every_region_of_the_plan(tmp_path: Path) -> None:
    # Licensed search on /archive/ only: no TDM reservation anywhere, so tdmrep.json
    # has one rule, but /archive/ answers with `search=n` and a `Link`.
    policy = tmp_path / "search-licence.yaml"
    policy.write_text("version: 1\nlicenses: [{name: idx, usages: [search]}]\nrules:\n"
                      "  - match: {purposes: [search-engine], paths: ['/archive/**']}\n"
                      "    action: {require_license: {any_of: [idx]}}\n")
    out = gk("declarations", "--only", "headers", "--policy", str(policy))
    assert out.returncode == 0, out.stderr
    rows = {line.split(" ", 1)[0]: line for line in out.stdout.splitlines()}
    assert sorted(rows) == ["/", "/archive$", "/archive/"]
    assert "Content-Usage: train-ai=y, search=n" in rows["/archive/"]
    assert 'Link: <https://localhost/license.xml>; rel="license"' in rows["/archive/"]
    assert "search=y" in rows["/"]


def test_declarations_give_a_licence_only_crawler_its_group(tmp_path: Path) -> None:
    policy = tmp_path / "licence.yaml"
    policy.write_text("version: 1\nlicenses: [{name: t, usages: [ai-train]}]\nrules:\n"
                      "  - {match: {purposes: [ai-training]}, action: "
                      "{require_license: {any_of: [t]}}}\n")
    out = gk("declarations", "--only", "robots.txt", "--policy", str(policy))
    assert out.returncode == 0, out.stderr
    group = out.stdout.split("User-agent: GPTBot\n", 1)[1].split("\n\n", 1)[0]
    assert "Allow: /\n" in group + "\n"
    assert "License: https://localhost/license.xml" in group
    assert "Content-Usage: train-ai=n" in group


def test_check_reports_an_origin_group_that_contradicts_the_policy(tmp_path: Path) -> None:
    origin = tmp_path / "robots.txt"
    origin.write_text("User-agent: GPTBot\nAllow: /\n")
    out = gk("check", str(ROOT / "policies" / "default.yaml"), "--robots-txt", str(origin))
    assert out.returncode == 1
    assert "conflict with" in out.stderr
    assert "GPTBot: the origin's robots.txt allows /" in out.stderr
    fine = tmp_path / "fine.txt"
    fine.write_text("User-agent: *\nDisallow: /private/\n")
    assert gk("check", str(ROOT / "policies" / "default.yaml"), "--robots-txt",
              str(fine)).returncode == 0


def test_check_reports_an_origin_disallow_the_policy_does_not_enforce(tmp_path: Path) -> None:
    origin = tmp_path / "robots.txt"
    origin.write_text("User-agent: GPTBot\nDisallow: /x/\n")
    policy = tmp_path / "welcome.yaml"
    policy.write_text("version: 1\nrules:\n  - {name: welcome, match: {crawlers: [GPTBot]}, "
                      "action: allow}\n")
    out = gk("check", str(policy), "--robots-txt", str(origin))
    assert out.returncode == 1
    assert (f"{policy}: conflict with {origin}: GPTBot: the origin's robots.txt disallows /x/ "
            "(Disallow: /x/) but the policy serves it (rule 'welcome')") in out.stderr


ORIGIN_USAGE = ("User-agent: *\nContent-Signal: search=yes, ai-train=yes, ai-input=yes\n"
                "Content-Usage: train-ai=y\nAllow: /\n")


def test_check_reports_origin_usage_lines_that_contradict_the_policy(tmp_path: Path) -> None:
    origin = tmp_path / "robots.txt"
    origin.write_text(ORIGIN_USAGE)
    default = str(ROOT / "policies" / "default.yaml")
    out = gk("check", default, "--robots-txt", str(origin))
    assert out.returncode == 1
    assert (f"{default}: conflict with {origin}: the origin's robots.txt says "
            "`Content-Signal: search=yes, ai-train=yes, ai-input=yes` where the policy "
            "declares `Content-Signal: search=yes, ai-input=yes, ai-train=no` (ai-train "
            "differs); the policy's line is served") in out.stderr
    assert "says `Content-Usage: train-ai=y` where the policy declares" in out.stderr
    assert ": ok (" not in out.stdout
    # The served file carries the policy's lines only.
    served = gk("declarations", "--only", "robots.txt", "--robots-txt", str(origin)).stdout
    assert served.count("Content-Signal:") == 1
    agreeing = tmp_path / "agreeing.txt"
    agreeing.write_text("User-agent: *\nContent-Signal: ai-train=no\nDisallow: /private/\n")
    out = gk("check", default, "--robots-txt", str(agreeing))
    assert out.returncode == 0, out.stderr


def test_check_fails_when_the_generated_robots_txt_is_longer_than_parsers_read(
        tmp_path: Path) -> None:
    # Sixty long pages listed one by one (and a glob that keeps every line).
    pages = ", ".join(["'/free/*.pdf'"] + [f"'/free/{i:03d}-{'x' * 1000}'" for i in range(60)])
    policy = tmp_path / "pages.yaml"
    policy.write_text(f"version: 1\nrules:\n  - {{name: pages, match: {{crawlers: [GPTBot], "
                      f"paths: [{pages}]}}, action: allow}}\n"
                      "  - {match: {purposes: [ai-training, ai-search]}, action: block}\n")
    out = gk("check", str(policy))
    assert out.returncode == 1
    assert ": ok (" not in out.stdout
    error = next(line for line in out.stderr.splitlines() if ": error: " in line)
    assert error.startswith(f"{policy}: error: the robots.txt groups generated from this "
                            "policy take ")
    assert "more than the 512,000 bytes (500 KiB) a parser must read" in error
    assert "Name fewer exact paths in the rules: a glob such as /free/**" in error
    size = int(error.split(" take ", 1)[1].split(" bytes", 1)[0].replace(",", ""))
    assert size > 512_000


def test_check_notes_refusals_robots_txt_cannot_state_for_clients_outside_the_catalog(
        tmp_path: Path) -> None:
    policy = tmp_path / "no-bots.yaml"
    policy.write_text("version: 1\ndefault: block\nrules:\n"
                      "  - {name: people, match: {kinds: [unknown]}, action: allow}\n"
                      "  - {name: no-bots, match: {kinds: [other-bot]}, action: block}\n")
    out = gk("check", str(policy))
    assert out.returncode == 0, out.stderr
    tail = ("; robots.txt cannot state it: those clients read its `*` group, which states "
            "none of the policy's refusals")
    assert (f"{policy}: note: rule 'no-bots' refuses clients outside the catalog "
            f"(other-bot){tail}") in out.stderr
    # Other bots never get past `no-bots`: the default is left to undeclared bots.
    assert (f"{policy}: note: the default refuses clients outside the catalog "
            f"(undeclared-bot){tail}") in out.stderr
    assert "outside the catalog" not in gk("check", str(ROOT / "policies" /
                                                          "default.yaml")).stderr


def test_check_notes_each_rate_limit_it_cannot_declare() -> None:
    out = gk("check", str(ROOT / "policies" / "default.yaml"))
    assert out.returncode == 0, out.stderr
    assert ("note: /: rule 'rate-limit-ai-assistants' sets a rate limit, which no "
            "declaration can state: declared as allowed") in out.stderr


def test_check_notes_a_glob_robots_txt_cannot_state_exactly(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nrules:\n  - {match: {crawlers: [GPTBot], paths: "
                      "['/docs/*.pdf']}, action: block}\n")
    out = gk("check", str(policy))
    assert out.returncode == 0
    assert "note: /docs/*.pdf$" in out.stderr


def test_explain_shows_what_is_declared_for_the_path() -> None:
    out = gk("explain", "--ua", GPTBOT, "--path", "/articles/1")
    assert out.returncode == 0, out.stderr
    assert ("declared:       served robots.txt disallows this path for GPTBot (Disallow: /), "
            "generated from the policy") in out.stdout
    assert "                header: Content-Usage: train-ai=n, search=y" in out.stdout
    # The lines of its robots.txt group that apply to it, and the site-wide signal.
    assert "                robots.txt: Content-Usage: train-ai=n\n" in out.stdout
    assert ("                robots.txt: Content-Signal: search=yes, ai-input=yes, "
            "ai-train=no") in out.stdout
    report = json.loads(gk("explain", "--ua", GPTBOT, "--path", "/a", "--json").stdout)
    assert report["declarations"]["robots_txt"]["allowed"] is False
    assert ["tdm-reservation", "1"] in report["declarations"]["headers"]


def test_explain_shows_the_licence_line_that_applies_to_the_crawler() -> None:
    out = gk("explain", "--ua", GPTBOT, "--path", "/premium/a", "--policy",
             str(ROOT / "policies" / "examples" / "license-first.yaml"), "--json")
    assert out.returncode == 0, out.stderr
    lines = json.loads(out.stdout)["declarations"]["robots_txt"]["lines"]
    assert lines == ["Content-Usage: train-ai=n", "License: https://localhost/license.xml",
                     "Content-Signal: search=yes, ai-input=no, ai-train=no"]


@pytest.mark.parametrize("path", ["/robots.txt", "/license.xml", "/.well-known/tdmrep.json",
                                  "/.well-known/gatekeeper/licenses?format=json"])
def test_explain_answers_a_public_document_as_the_proxy_does(tmp_path: Path,
                                                             path: str) -> None:
    policy = tmp_path / "block.yaml"
    policy.write_text("version: 1\ndefault: block\nrules: []\n")
    out = gk("explain", "--ua", GPTBOT, "--path", path, "--policy", str(policy))
    assert out.returncode == 0, out.stderr
    kind = {"/robots.txt": "robots.txt", "/license.xml": "license.xml",
            "/.well-known/tdmrep.json": "tdmrep.json"}.get(path, "terms")
    assert (f"rule:           declarations -> allow ({kind} is a public document, "
            "never gated)") in out.stdout
    assert (f"decision:       answer 200: {kind}, served by Gatekeeper whatever the policy "
            "says about the client") in out.stdout
    assert "answer 403" not in out.stdout
    assert "header: tdm-reservation" not in out.stdout  # only forwarded responses
    # Every generated group allows it, so the declared verdict agrees.
    assert "served robots.txt allows this path for GPTBot" in out.stdout


def test_explain_leaves_the_keys_to_the_gate_until_a_signing_key_exists(
        tmp_path: Path) -> None:
    policy = tmp_path / "block.yaml"
    policy.write_text("version: 1\ndefault: block\nrules: []\n")
    out = gk("explain", "--ua", GPTBOT, "--path", "/.well-known/jwks.json", "--policy",
             str(policy), env={"GATEKEEPER_STATE_DIR": str(tmp_path / "state")})
    assert out.returncode == 0, out.stderr
    assert "rule:           default -> block" in out.stdout
    assert "answer 403" in out.stdout


ROBOTS_ALLOWED = ("version: 1\ndefault: block\nrules:\n  - {name: served, match: "
                  "{crawlers: [GPTBot], robots: allowed}, action: allow}\n")


def test_check_warns_that_robots_conditions_never_match_without_compliance(
        tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(ROBOTS_ALLOWED)
    settings = tmp_path / "settings.yaml"
    settings.write_text("robots_compliance: false\n")
    warning = (f"{policy}:4: warning: rule 'served' has a robots: condition, and "
               "robots_compliance is off: it never matches")
    out = gk("check", str(policy), "--config", str(settings))
    assert out.returncode == 0, out.stderr
    assert warning in out.stderr
    # The environment says so too; with compliance on (the default) nothing is said.
    out = gk("check", str(policy), env={"GATEKEEPER_ROBOTS_COMPLIANCE": "false"})
    assert warning in out.stderr
    assert "warning" not in gk("check", str(policy)).stderr


def test_declarations_follow_the_robots_compliance_setting(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(ROBOTS_ALLOWED)
    settings = tmp_path / "settings.yaml"
    settings.write_text("robots_compliance: false\n")
    for extra, allowed in (((), True), (("--config", str(settings)), False)):
        out = gk("declarations", "--only", "robots.txt", "--policy", str(policy), *extra)
        assert out.returncode == 0, out.stderr
        assert RobotsRules.parse(out.stdout.encode()).verdict(
            "GPTBot", "/articles/1").allowed is allowed, extra


def test_explain_declares_what_the_gate_decides_without_robots_compliance(
        tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(ROBOTS_ALLOWED)
    origin = tmp_path / "robots.txt"
    origin.write_text("User-agent: *\nDisallow: /private/\n")
    settings = tmp_path / "settings.yaml"
    settings.write_text("robots_compliance: false\n")
    args = ("explain", "--ua", GPTBOT, "--path", "/articles/1", "--policy", str(policy),
            "--robots-txt", str(origin), "--json")
    for extra, served in (((), True), (("--config", str(settings)), False)):
        out = gk(*args, *extra)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["decision"]["forward"] is served, extra
        assert report["declarations"]["robots_txt"]["allowed"] is served, extra
        assert report["robots"]["checked"] is served, extra
    assert report["robots"]["note"] == "robots.txt compliance is off (robots_compliance: false)"
