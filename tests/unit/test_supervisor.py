"""The supervisor's refusal of state kept per worker that the policy needs shared."""

from __future__ import annotations

import dataclasses

import pytest

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.catalog import Catalog
from gatekeeper.errors import SettingsError
from gatekeeper.policy.loader import load_default_policy, load_policy_text
from gatekeeper.settings import Settings
from gatekeeper.supervisor import check_shared_limits


def test_several_workers_need_a_shared_store_for_global_limits() -> None:
    catalog = load_catalog()
    settings = dataclasses.replace(Settings(), workers=2)
    with pytest.raises(SettingsError, match="rate-limit-ai-assistants"):
        check_shared_limits(settings, load_default_policy(catalog))
    check_shared_limits(dataclasses.replace(settings, store="redis"),
                        load_default_policy(catalog))
    no_limits = load_policy_text("version: 1\nrules: [{match: {purposes: [ai-training]}, "
                                 "action: block}]\n", "p.yaml", catalog)
    check_shared_limits(settings, no_limits)


IDENTITY_RULE = """
version: 1
rules:
  - name: signed-agents-only
    match: {crawlers: [ChatGPT Agent], identities: [verified, unverified, spoofed]}
    action: block
"""
LICENCE_RULE = """
version: 1
licenses:
  - name: ai-train-standard
    usages: [ai-train]
rules:
  - name: premium-needs-a-licence
    match: {paths: ["/premium/**"]}
    action: {require_license: {any_of: [ai-train-standard]}}
"""
PATHS_ONLY = "version: 1\nrules: [{match: {paths: ['/private/**']}, action: block}]\n"


def test_a_rule_a_signature_decides_needs_one_replay_cache_for_all_workers() -> None:
    catalog = load_catalog()
    settings = dataclasses.replace(Settings(), workers=3)
    policy = load_policy_text(IDENTITY_RULE, "p.yaml", catalog)
    with pytest.raises(SettingsError) as refused:
        check_shared_limits(settings, policy, catalog)
    message = str(refused.value)
    assert message.startswith("workers: 3 workers with store: memory would each keep their "
                              "own Web Bot Auth replay cache")
    assert "signed-agents-only" in message
    assert "set store: redis" in message
    assert check_shared_limits(dataclasses.replace(settings, store="redis"), policy,
                               catalog) == ()
    assert check_shared_limits(dataclasses.replace(settings, workers=1), policy, catalog) == ()


def test_the_default_policy_is_refused_for_its_limits_and_its_spoofed_crawler_rule() -> None:
    catalog = load_catalog()
    settings = dataclasses.replace(Settings(), workers=2)
    with pytest.raises(SettingsError) as refused:
        check_shared_limits(settings, load_default_policy(catalog), catalog)
    message = str(refused.value)
    assert ("keep their own count for rate-limit-ai-assistants, slow-undeclared-bots, "
            "multiplying the limits; and their own Web Bot Auth replay cache") in message
    assert message.count("block-spoofed-crawlers") == 1


def test_a_licence_needs_one_replay_cache_only_when_tokens_are_accepted() -> None:
    # A token bound to a crawler's key is proven by the request's signature; without
    # site_hosts no token is accepted at all.
    catalog = load_catalog()
    policy = load_policy_text(LICENCE_RULE, "p.yaml", catalog)
    settings = dataclasses.replace(Settings(), workers=2)
    with pytest.raises(SettingsError, match="premium-needs-a-licence"):
        check_shared_limits(dataclasses.replace(settings, site_hosts=("example.com",)),
                            policy, catalog)
    [warning] = check_shared_limits(settings, policy, catalog)
    assert "replay cache" in warning


def test_a_policy_no_signature_changes_starts_with_a_warning_about_replays() -> None:
    catalog = load_catalog()
    settings = dataclasses.replace(Settings(), workers=2)
    [warning] = check_shared_limits(settings, load_policy_text(PATHS_ONLY, "p.yaml", catalog),
                                    catalog)
    assert warning.startswith("workers: 2 workers with store: memory each keep their own "
                              "Web Bot Auth replay cache")
    assert "set store: redis" in warning


def test_without_a_signing_crawler_in_the_catalog_there_is_nothing_to_replay() -> None:
    packaged = load_catalog()
    catalog = Catalog(c for c in packaged if not c.signature_agents)
    settings = dataclasses.replace(Settings(), workers=2)
    assert check_shared_limits(settings, load_policy_text(IDENTITY_RULE, "p.yaml", packaged),
                               catalog) == ()
    assert check_shared_limits(settings, load_policy_text(PATHS_ONLY, "p.yaml", catalog),
                               catalog) == ()



BLOCK_UNDECLARED = """
version: 1
rules:
  - name: block-undeclared-bots
    match: {purposes: [undeclared-bot]}
    action: block
"""
# Served only to clients that claim nothing and are not scored as bots: the score
# decides too, by taking a client out of `unknown`.
SERVE_ONLY_UNKNOWN = """
version: 1
default: block
rules:
  - name: serve-people
    match: {kinds: [unknown]}
    action: allow
"""
# Both kinds alike: the score changes nothing here.
EVERY_UNDECLARED_CLIENT = """
version: 1
rules:
  - name: private-for-everyone-unnamed
    match: {kinds: [unknown, undeclared-bot], paths: ["/private/**"]}
    action: block
"""


@pytest.mark.parametrize(("policy", "rule"), [(BLOCK_UNDECLARED, "block-undeclared-bots"),
                                              (SERVE_ONLY_UNKNOWN, "serve-people")])
def test_rules_on_undeclared_bots_start_with_a_warning_that_each_worker_scores_alone(
    policy: str, rule: str
) -> None:
    catalog = load_catalog()
    settings = dataclasses.replace(Settings(), workers=2)
    loaded = load_policy_text(policy, "p.yaml", catalog)
    replay, behaviour = check_shared_limits(settings, loaded, catalog)
    assert "replay cache" in replay
    assert behaviour.startswith("workers: 2 workers with store: memory each keep their own "
                                "behaviour windows")
    assert "a crawler refused by one worker that comes back to another as a browser" in behaviour
    assert f"That weakens {rule};" in behaviour
    assert "set store: redis (with behaviour_store: shared, the default)" in behaviour
    # Nothing to warn about: one worker, a shared store, or no scoring at all.
    assert check_shared_limits(dataclasses.replace(settings, workers=1), loaded, catalog) == ()
    assert check_shared_limits(dataclasses.replace(settings, store="redis"), loaded,
                               catalog) == ()
    assert check_shared_limits(dataclasses.replace(settings, behaviour=False), loaded,
                               catalog) == (replay,)
    # Nor when the rules treat undeclared bots as any client that names no crawler.
    for text in (EVERY_UNDECLARED_CLIENT, PATHS_ONLY):
        assert check_shared_limits(settings, load_policy_text(text, "p.yaml", catalog),
                                   catalog) == (replay,)


# -- /status.json ------------------------------------------------------------------------
