"""The command line, run as a user would: `python -m gatekeeper ...`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gatekeeper import __version__

ROOT = Path(__file__).resolve().parents[2]


def gk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gatekeeper", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_version() -> None:
    out = gk("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"gatekeeper {__version__}"


def test_check_accepts_every_shipped_policy() -> None:
    files = [str(p) for p in sorted((ROOT / "policies").rglob("*.yaml"))]
    out = gk("check", *files)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(": ok (") == len(files)


def test_check_reports_file_line_and_field_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - match: {crawlers: [GPTBott]}\n    action: block\n")
    out = gk("check", str(ROOT / "policies" / "default.yaml"), str(bad))
    assert out.returncode == 1
    assert f"{bad}:3: rules[0].match.crawlers[0]: unknown crawler 'GPTBott'" in out.stderr
    assert "default.yaml: ok" in out.stdout


def test_explain_shows_classification_rule_and_answer() -> None:
    out = gk("explain", "--ua", "Mozilla/5.0 (compatible; GPTBot/1.2)", "--path", "/a/../b")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "GPTBot by OpenAI, purpose ai-training" in text
    assert "identity:       unverified" in text
    assert "rule:           block-ai-training at <embedded default policy>:" in text
    assert "answer 403 (blocked)" in text
    assert "GET localhost/b" in text


def test_explain_json_for_a_browser_is_a_forward() -> None:
    out = gk("explain", "--ua", "Mozilla/5.0 Firefox/128.0", "--path", "/x?q=1", "--json")
    report = json.loads(out.stdout)
    assert report["classification"]["kind"] == "unknown"
    assert report["decision"]["forward"] is True
    assert report["rule"]["name"] == "default"
    assert report["request"]["query"] == "q=1"


def test_explain_reports_a_request_the_gate_would_refuse() -> None:
    out = gk("explain", "--path", "/premium/%2Fx", "--json")
    report = json.loads(out.stdout)
    assert report["rejected"]["reason"] == "encoded_slash"


def test_explain_with_a_custom_policy_and_header(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nrules:\n  - name: keyed\n    match: {headers: {X-Key: present}}"
                      "\n    action: {block: {status: 451}}\n")
    out = gk("explain", "--policy", str(policy), "--header", "X-Key: 1", "--json")
    report = json.loads(out.stdout)
    assert report["rule"]["source"] == f"{policy}:3"
    assert report["decision"]["status"] == 451


def test_schema_is_json() -> None:
    out = gk("schema")
    assert json.loads(out.stdout)["title"].startswith("Gatekeeper policy")


def test_run_without_upstream_is_a_clear_error() -> None:
    out = gk("run", "--listen", "127.0.0.1:0")
    assert out.returncode == 2
    assert "upstream: required" in out.stderr


def test_explain_describes_the_rate_limit_it_would_apply() -> None:
    out = gk("explain", "--ua", "Mozilla/5.0 (compatible; ChatGPT-User/1.0)", "--json")
    limit = json.loads(out.stdout)["rule"]["rate_limit"]
    assert limit["per_second"] == 1.0
    assert limit["burst"] == 20
    assert limit["key"] == "crawler"
