"""`gatekeeper declarations`, `check --robots-txt` and the declarations in `explain`."""

from __future__ import annotations

import json
from pathlib import Path

from gatekeeper.core.robots import RobotsRules
from tests.unit.test_cli import ROOT, gk

GPTBOT = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2)"


def test_declarations_prints_every_document_for_the_default_policy() -> None:
    out = gk("declarations", "--host", "news.example")
    assert out.returncode == 0, out.stderr
    for title in ("==> https://news.example/robots.txt", "==> https://news.example/tdmrep.json",
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
    assert rules[-1] == {"location": "/", "tdm-reservation": 1,
                         "tdm-policy": "https://localhost/license.xml"}


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
    assert "Content-Usage: train-ai=n, search=y" in out.stdout
    report = json.loads(gk("explain", "--ua", GPTBOT, "--path", "/a", "--json").stdout)
    assert report["declarations"]["robots_txt"]["allowed"] is False
    assert ["tdm-reservation", "1"] in report["declarations"]["headers"]
