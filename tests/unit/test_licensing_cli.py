"""The licensing commands as an operator runs them: keys, licensees, tokens, ledger."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gatekeeper.licensing.keys import Keyring

ROOT = Path(__file__).resolve().parents[2]
POLICY = """
version: 1
licenses:
  - name: ai-train-standard
    usages: [ai-train]
    price: {amount: 0.002, currency: USD, per: request}
rules: []
"""


def gk(state: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    env |= {"GATEKEEPER_STATE_DIR": str(state), "GATEKEEPER_SITE_HOSTS": "news.example",
            "GATEKEEPER_POLICY": str(state.parent / "policy.yaml")}
    return subprocess.run([sys.executable, "-m", "gatekeeper", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env, input=stdin)


def test_keys_licensees_and_tokens_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    state = tmp_path / "state"
    generated = gk(state, "keys", "generate")
    assert generated.returncode == 0, generated.stderr
    assert "active" in gk(state, "keys", "list").stdout
    added = gk(state, "licensee", "add", "acme", "--name", "Acme AI", "--crawler", "GPTBot",
               "--license", "ai-train-standard")
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip().splitlines()[-1]
    assert secret.startswith("gks_")
    assert secret not in (state / "licensees.json").read_text()  # stored hashed
    token = gk(state, "token", "issue", "acme", "--license", "ai-train-standard").stdout.strip()
    inspected = gk(state, "token", "inspect", stdin=token)
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    assert "licensee acme, licence ai-train-standard, crawler GPTBot" in inspected.stdout
    token_id = inspected.stdout.split(" id ")[1].split(",")[0]
    assert gk(state, "token", "revoke", token_id).returncode == 0
    assert f"{token_id}  revoked  licensee=acme  licence=ai-train-standard" in gk(
        state, "token", "list").stdout
    assert "disabled" in (gk(state, "licensee", "disable", "acme").stdout)
    assert "acme  disabled" in gk(state, "licensee", "list").stdout


def test_adding_a_licensee_checks_crawler_and_licence_names(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    state = tmp_path / "state"
    bad_crawler = gk(state, "licensee", "add", "x", "--name", "X", "--crawler", "NoSuchBot",
                     "--license", "ai-train-standard")
    assert bad_crawler.returncode == 2
    assert "'NoSuchBot' is not a catalog crawler" in bad_crawler.stderr
    bad_licence = gk(state, "licensee", "add", "x", "--name", "X", "--crawler", "GPTBot",
                     "--license", "nope")
    assert bad_licence.returncode == 2
    assert "nope not declared in the policy" in bad_licence.stderr


def test_ledger_commands_without_a_ledger_say_so(tmp_path: Path) -> None:
    out = gk(tmp_path / "state", "ledger", "verify")
    assert out.returncode == 2
    assert "no ledger yet" in out.stderr


def test_an_old_token_id_beginning_with_a_dash_is_revoked_after_a_double_dash(
        tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    state = tmp_path / "state"
    revoked = gk(state, "token", "revoke", "--", "-M7Ss5mESjuNwr2XFLHOHA")
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked -M7Ss5mESjuNwr2XFLHOHA" in revoked.stdout


def test_revoking_a_whole_token_instead_of_its_id_says_how_to_find_the_id(
        tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    refused = gk(tmp_path / "state", "token", "revoke", "eyJhbGciOi.eyJzdWIi.c2ln")
    assert refused.returncode == 2
    assert "gatekeeper token inspect" in refused.stderr


def test_an_id_beginning_with_a_dash_without_a_double_dash_gets_a_hint(tmp_path: Path) -> None:
    out = gk(tmp_path / "state", "token", "revoke", "-M7Ss5mESjuNwr2XFLHOHA")
    assert out.returncode == 2
    assert "goes after `--`: gatekeeper token revoke -- -XyZ" in out.stderr


def test_a_key_whose_id_begins_with_a_dash_is_retired_after_a_double_dash(
        tmp_path: Path) -> None:
    # One thumbprint in 64 begins with '-': make keys until one does.
    keys = tmp_path / "state" / "keys"
    while not (kid := Keyring.generate(keys)).startswith("-"):
        for stale in keys.glob(f"{kid}.*"):
            stale.unlink()
    retired = gk(tmp_path / "state", "keys", "retire", "--", kid)
    assert retired.returncode == 0, retired.stderr
    assert "retired" in gk(tmp_path / "state", "keys", "list").stdout
