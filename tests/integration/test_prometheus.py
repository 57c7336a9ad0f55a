"""The shipped Grafana dashboard and Prometheus alert rules, against a real Prometheus.

A real `prometheus` (Debian's package; scripts/test.sh installs it) scrapes a real
`gatekeeper run` process every second, each on a loopback port of its own, while the
test drives traffic through the gate that moves every panel: browsers, a spoofed and a
verified GPTBot, a robots.txt violation and robots.txt reads, a rate-limited assistant,
a refused crawler coming back as a browser (an undeclared bot), a bad Web Bot Auth
signature, a client hanging up mid-response, licence tokens issued, used, forged, out
of scope and revoked, upstream timeouts, a malformed request, a good and a bad policy
reload, range lists refreshed every two seconds from a local HTTPS server, and the
Redis store stopped under the running gate. Then every panel query, template variable,
annotation and alert expression goes through Prometheus's HTTP API: each must parse,
each panel query must return series with a non-zero value (short of `NO_DATA_ALLOWED`,
which says why), every rule must evaluate without error, and the alerts the traffic
provokes must be active. `promtool` checks the rule file and the rendered
configuration, and runs the alert rules' unit tests (gatekeeper-alerts.test.yml).

Every counter series a panel reads is created in a seed phase and scraped before the
main traffic moves it: rate() and increase() need two samples of a series, and a
series born with its first increment has no sample before it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gatekeeper.licensing.issued import read as read_issued
from gatekeeper.licensing.keys import Keyring
from gatekeeper.licensing.licensees import Licensees
from tests.integration.conftest import BROWSER, GPTBOT, Upstream, raw_request, status_of
from tests.integration.test_process import free_port, run_gatekeeper  # noqa: F401  (the fixture)
from tests.support.https_server import https_server
from tests.support.redis_server import RedisTestServer

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "gatekeeper.json"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "gatekeeper-alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "gatekeeper-alerts.test.yml"
RANGES = ROOT / "gatekeeper" / "data" / "ip-ranges"
OPERATIONS = ROOT / "docs" / "operations.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"
JOB = "gatekeeper"

# Panel queries (panel title, refId) allowed to return no data or only zeros, each with
# the reason. Empty: the traffic below gives every panel query a non-zero value.
NO_DATA_ALLOWED: dict[tuple[str, str], str] = {}

# What Grafana substitutes before sending a query: the rate window and range as a
# 5-minute window (all the test's samples fall in it), the job the config scrapes,
# and the instance variable's "All" value.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "5m", "$__interval": "5m",
                     "$job": JOB, "$instance": ".+"}
# The alerts the traffic below provokes (pending or firing).
PROVOKED = {"GatekeeperPolicyReloadFailed", "GatekeeperStoreFallbackActive",
            "GatekeeperUpstreamErrors"}

POLICY = """\
version: 1
licenses:
  - name: ai-train-articles
    usages: [ai-train]
    paths: ["/articles/**"]
    validity: 1d
rules:
  - name: never-gate-declarations
    match: {paths: ["/robots.txt", "/.well-known/**"]}
    action: allow
  - name: block-spoofed-crawlers
    match: {identities: [spoofed]}
    action: block
  - name: enforce-robots-txt
    match: {kinds: [crawler], robots: disallowed}
    action: block
  - name: training-needs-a-licence
    match: {purposes: [ai-training]}
    action: {require_license: {any_of: [ai-train-articles]}}
  - name: rate-limit-ai-assistants
    match: {purposes: [ai-assistant]}
    action: {rate_limit: {rate: 1/h, burst: 1, key: crawler}}
"""
RELOADED = POLICY + """\
  - name: allow-search-engines
    match: {purposes: [search-engine]}
    action: allow
"""
BROKEN = POLICY.replace("action: block\n  - name: enforce", "action: blok\n  - name: enforce")

BROWSER_HEADERS = {"User-Agent": BROWSER, "Accept": "text/html", "Accept-Language": "en"}
SPOOFED_GPTBOT = {"User-Agent": GPTBOT}  # from 127.0.0.1: not in OpenAI's GPTBot ranges
GPTBOT_VERIFIED = {"User-Agent": GPTBOT, "X-Forwarded-For": "20.171.206.7"}
ASSISTANT = {"User-Agent": "Mozilla/5.0 (compatible; ChatGPT-User/1.0)",
             "X-Forwarded-For": "104.208.184.193"}  # in OpenAI's ChatGPT-User ranges
# A crawler refused from this address, then the same address as a browser: the
# behaviour score's ua-switch-after-refusal makes it an undeclared bot.
SWITCHER = "198.51.100.77"
# A signature that cannot even be parsed: a Web Bot Auth failure (malformed).
BAD_SIGNATURE = {**BROWSER_HEADERS, "X-Forwarded-For": "192.0.2.80",
                 "Signature-Input": "sig1=nonsense", "Signature": "sig1=:AAAA:"}


# -- the shipped files, read statically -----------------------------------------------


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in _dashboard()["panels"]:
        out += panel.get("panels", []) if panel["type"] == "row" else [panel]
    return out


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _grafana(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def _documented_metrics() -> set[str]:
    return set(re.findall(r"^\| `(gatekeeper_[a-z_]+)` \|", METRICS_DOC.read_text(), re.M))


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(gatekeeper_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if n.endswith(
        ("_seconds_bucket", "_seconds_sum", "_seconds_count")) else n for n in names}


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_the_dashboard_is_importable_and_names_its_data_source_by_a_variable() -> None:
    dash = _dashboard()
    assert dash["schemaVersion"] >= 36
    assert dash["uid"]
    assert dash["title"]
    assert dash["id"] is None
    (source,) = [v for v in dash["templating"]["list"] if v["name"] == "datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    assert [i["pluginId"] for i in dash["__inputs"]] == ["prometheus"]
    seen_ids: set[int] = set()
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        assert panel["id"] not in seen_ids
        seen_ids.add(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
    for panel in _panels():
        assert panel["title"], panel
        assert panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == panel["datasource"], panel["title"]
            assert t["expr"].strip(), panel["title"]
    for variable in dash["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"


def test_the_queries_use_only_documented_metrics() -> None:
    documented = _documented_metrics()
    assert len(documented) > 25
    exprs = [t["expr"] for p in _panels() for t in p["targets"]]
    exprs += [r["expr"] for r in _alert_rules()]
    for expr in exprs:
        assert _metric_names(expr) <= documented, expr


def test_every_alert_has_a_severity_a_summary_and_a_runbook_in_operations_md() -> None:
    anchors = {_slug(m) for m in re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), re.M)}
    rules = _alert_rules()
    assert {r["alert"] for r in rules} == {
        "GatekeeperUpstreamErrors", "GatekeeperGateLatencyHigh", "GatekeeperPolicyReloadFailed",
        "GatekeeperStoreFallbackActive", "GatekeeperCrawlerRangesStale",
        "GatekeeperSpoofingSpike"}
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        notes = rule["annotations"]
        assert notes["summary"], rule["alert"]
        assert notes["description"], rule["alert"]
        page, _, anchor = notes["runbook_url"].partition("#")
        assert page == "docs/operations.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no heading #{anchor} in operations.md"


# -- against a real Prometheus --------------------------------------------------------


def _binary(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}",) if os.access(p, os.X_OK)), None)
    if path is None:
        pytest.fail(f"{name} is not installed. scripts/test.sh installs it (Debian's "
                    f"prometheus package, which provides prometheus and promtool); or run "
                    f"scripts/setup.sh prometheus once.")
    return path


def _promtool(*args: str) -> None:
    done = subprocess.run([_binary("promtool"), *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


@pytest.fixture
def redis_server() -> Iterator[RedisTestServer]:
    with RedisTestServer() as server:
        yield server


class Prometheus:
    def __init__(self, tmp: Path, admin: int) -> None:
        self.binary = _binary("prometheus")
        self.dir = tmp / "prometheus"
        self.dir.mkdir()
        config = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
        # The shipped file, with the test's target and a short interval; the rules file
        # sits next to it, as the shipped rule_files entry expects.
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        (job,) = config["scrape_configs"]
        assert (job["job_name"], job["metrics_path"]) == (JOB, "/metrics")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{admin}"]}]
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        shutil.copy(ALERTS, self.dir / ALERTS.name)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def api(self, s: aiohttp.ClientSession, path: str, **params: str) -> dict[str, Any]:
        async with s.get(self.url + path, params=params) as r:
            body: dict[str, Any] = await r.json()
        return body

    async def query(self, s: aiohttp.ClientSession, expr: str) -> list[dict[str, Any]]:
        body = await self.api(s, "/api/v1/query", query=expr)
        assert body["status"] == "success", f"{expr}\n-> {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def until(self, s: aiohttp.ClientSession, what: str, check: Any,
                    timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("prometheus exited:\n" + self.log.read_text())
            try:
                if await check():
                    return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: {what} not within {timeout} s\n"
                                     + self.log.read_text()[-2000:])
            await asyncio.sleep(0.2)


def _value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


async def _admin_requests(s: aiohttp.ClientSession, admin_url: str) -> float:
    async with s.get(admin_url + "/metrics") as r:
        text = await r.text()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == "gatekeeper_requests_total")


async def _scraped(s: aiohttp.ClientSession, prom: Prometheus, admin_url: str) -> None:
    """Wait until Prometheus holds a scrape taken after every request so far."""
    expected = await _admin_requests(s, admin_url)

    async def caught_up() -> bool:
        got = await prom.query(s, f'sum(gatekeeper_requests_total{{job="{JOB}"}})')
        return bool(got) and _value(got[0]) >= expected

    await prom.until(s, f"a scrape with {expected} requests", caught_up)


async def _get(s: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    async with s.get(url, headers=headers) as r:
        await r.read()
        return r.status


async def _token(s: aiohttp.ClientSession, gk_url: str, basic: str) -> str:
    form = {"grant_type": "rsl", "license": "ai-train-articles",
            "resource": gk_url + "/articles/1"}
    async with s.post(gk_url + "/.well-known/gatekeeper/token", data=form,
                      headers={"Authorization": f"Basic {basic}"}) as r:
        assert r.status == 200, await r.text()
        token: str = (await r.json())["access_token"]
    return token


async def _traffic(s: aiohttp.ClientSession, gk_url: str, port: int, basic: str,
                   rounds: int, *, seed: bool = False) -> str:
    """Rounds of every kind of request the panels count, with a licence token issued
    for them; returns the token."""
    token = await _token(s, gk_url, basic)
    licensed = {**GPTBOT_VERIFIED, "Authorization": f"License {token}"}
    for i in range(rounds):
        assert await _get(s, f"{gk_url}/page/{i}", BROWSER_HEADERS) == 200
        assert await _get(s, f"{gk_url}/page/{i}", SPOOFED_GPTBOT) == 403
        assert await _get(s, f"{gk_url}/private/{i}", GPTBOT_VERIFIED) == 403  # robots.txt
        assert await _get(s, f"{gk_url}/articles/{i}", GPTBOT_VERIFIED) == 401
        assert await _get(s, f"{gk_url}/articles/{i}", licensed) == 200
        forged = {**GPTBOT_VERIFIED, "Authorization": f"License {token}x"}
        assert await _get(s, f"{gk_url}/articles/{i}", forged) == 401
        assert await _get(s, gk_url + "/about", licensed) == 403  # out of scope
        # The seed's first is within the burst; its second is the first 429.
        assert await _get(s, f"{gk_url}/answer/{i}", ASSISTANT) == (200 if seed else 429)
        assert await _get(s, f"{gk_url}/answer/{i}", ASSISTANT) == 429
        assert await _get(s, gk_url + "/robots.txt", GPTBOT_VERIFIED) == 200
        refused = await raw_request(port, b"GET /a%2Fb HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                          b"Connection: close\r\n\r\n")
        assert status_of(refused) == 400
        assert await _get(s, f"{gk_url}/page/{i}", BAD_SIGNATURE) == 200
        switcher = {"X-Forwarded-For": SWITCHER}
        assert await _get(s, f"{gk_url}/page/{i}", {"User-Agent": GPTBOT, **switcher}) == 403
        assert await _get(s, f"{gk_url}/page/{i}", {**BROWSER_HEADERS, **switcher}) == 200
        await _hang_up_mid_response(port)
    return token


async def _hang_up_mid_response(port: int) -> None:
    """A client that reads the start of a large response and hangs up: a client fault."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /big?mib=8 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: "
                 + BROWSER.encode() + b"\r\nAccept: text/html\r\nAccept-Language: en\r\n"
                 b"X-Forwarded-For: 192.0.2.81\r\n\r\n")
    await reader.readexactly(256 * 1024)
    writer.transport.abort()


async def _reload(s: aiohttp.ClientSession, admin_url: str, policy: Path, text: str,
                  result: str) -> None:
    async def count() -> float:
        async with s.get(admin_url + "/metrics") as r:
            metrics = await r.text()
        return sum(sample.value for family in text_string_to_metric_families(metrics)
                   for sample in family.samples
                   if sample.name == "gatekeeper_policy_reloads_total"
                   and sample.labels["result"] == result)

    before = await count()
    await asyncio.to_thread(policy.write_text, text)
    deadline = time.monotonic() + 10
    while await count() <= before:
        assert time.monotonic() < deadline, f"no policy reload {result}"
        await asyncio.sleep(0.1)


def _revoke(state: Path, settings: Path, token_id: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    env["GATEKEEPER_STATE_DIR"] = str(state)
    done = subprocess.run([sys.executable, "-m", "gatekeeper", "token", "revoke", token_id,
                           "--config", str(settings)], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alert_rules_pass_their_promtool_unit_tests() -> None:
    # Each alert made to fire from input series, and kept quiet by others.
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [ALERTS.name]
    tested = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"]}
    assert tested == {r["alert"] for r in _alert_rules()}
    for rule in _alert_rules():
        cases = [c for t in tests["tests"] for c in t["alert_rule_test"]
                 if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in cases), f"{rule['alert']}: never made to fire"
        assert any(not c["exp_alerts"] for c in cases), f"{rule['alert']}: never kept quiet"
    _promtool("test", "rules", str(ALERT_TESTS))


def _range_sources(tmp: Path, base: str) -> Path:
    """The packaged range sources and snapshots, each list's URL on the local server."""
    folder = tmp / "ip-ranges"
    shutil.copytree(RANGES, folder)
    sources = json.loads((folder / "sources.json").read_text(encoding="utf-8"))
    for source_id, entry in sources["sources"].items():
        entry["url"] = f"{base}/{entry['snapshot'] or source_id + '.json'}"
    (folder / "sources.json").write_text(json.dumps(sources), encoding="utf-8")
    return folder / "sources.json"


def _range_lists_app() -> web.Application:
    """Every list as its snapshot, with an ETag: refreshes after the first are 304s.
    Lists shipped without a snapshot are 404: their refreshes fail, as a list whose
    publisher is down does."""
    async def one(request: web.Request) -> web.StreamResponse:
        path = RANGES / request.match_info["name"]
        if not path.is_file() or request.match_info["name"] == "sources.json":
            raise web.HTTPNotFound()
        etag = '"' + str(path.stat().st_mtime_ns) + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=path.read_bytes(), content_type="application/json",
                            headers={"ETag": etag})

    app = web.Application()
    app.router.add_get("/{name}", one)
    return app


async def test_every_panel_and_alert_through_a_real_prometheus(  # type: ignore[no-untyped-def]
    upstream: Upstream, run_gatekeeper, redis_server: RedisTestServer, tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _binary("prometheus")
    _promtool("check", "rules", str(ALERTS))
    # The range lists are refreshed from a local HTTPS server, under a test CA the
    # Gatekeeper process trusts through OpenSSL's SSL_CERT_FILE.
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    async with https_server(_range_lists_app(), ca) as lists:
        await _with_lists(upstream, run_gatekeeper, redis_server, tmp_path,
                          _range_sources(tmp_path, lists))


async def _with_lists(upstream: Upstream, start: Any, redis_server: RedisTestServer,
                      tmp_path: Path, sources: Path) -> None:
    state = tmp_path / "state-0"  # run_gatekeeper's first process keeps its state here
    Keyring.generate(state / "keys")
    secret = Licensees(state / "licensees.json").add(
        "acme", "Acme AI", "GPTBot", ["ai-train-articles"])
    basic = base64.b64encode(f"acme:{secret}".encode()).decode()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({
        "store": "redis", "redis_url": redis_server.url, "site_hosts": ["127.0.0.1"],
        "trusted_proxies": ["127.0.0.0/8"], "upstream_read_timeout": 1,
        "ranges_sources": str(sources), "ranges_cache_dir": str(tmp_path / "ranges-cache"),
        "ranges_refresh_interval": 2, "log_level": "warning"}))
    gk = start(upstream.url, "--policy", str(policy), "--config", str(settings))
    prom = Prometheus(tmp_path, gk.admin)
    prom.start()
    try:
        # The rendered configuration, with the shipped rule file next to it.
        await asyncio.to_thread(_promtool, "check", "config", str(prom.config))
        async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as s:
            await _run(s, prom, gk, policy, state, settings, basic, redis_server)
    finally:
        prom.stop()


async def _run(s: aiohttp.ClientSession, prom: Prometheus, gk: Any, policy: Path,
               state: Path, settings: Path, basic: str, redis_server: RedisTestServer) -> None:
    async def ready() -> bool:
        async with s.get(prom.url + "/-/ready") as r:
            return r.status == 200

    async def target_up() -> bool:
        return bool(await prom.query(s, f'up{{job="{JOB}"}} == 1'))

    await prom.until(s, "ready", ready)
    # The zero-initialised series (reloads, fallbacks, upstream errors) need a sample
    # before anything moves them.
    await prom.until(s, "the first scrape of Gatekeeper", target_up)
    started = time.monotonic()
    await _reload(s, gk.admin_url, policy, RELOADED, "success")
    # Seed: one of everything, so that each series exists before it is counted on.
    first_token = await _traffic(s, gk.url, gk.port, basic, rounds=1, seed=True)
    await _scraped(s, prom, gk.admin_url)

    # Main: the same again, three times, with a broken policy file on disk (the last
    # good policy serves), three upstream timeouts (504) and the seed's token revoked.
    await _reload(s, gk.admin_url, policy, BROKEN, "failure")
    (first, *_) = read_issued(state / "issued.jsonl")
    timeouts = [_get(s, f"{gk.url}/slow?s=3&n={i}", BROWSER_HEADERS) for i in range(3)]
    _, _, *statuses = await asyncio.gather(
        _traffic(s, gk.url, gk.port, basic, rounds=3),
        asyncio.to_thread(_revoke, state, settings, first.token_id), *timeouts)
    assert statuses == [504, 504, 504]
    await _gate_time_excludes_the_upstream(s, gk.admin_url)
    revoked = {**GPTBOT_VERIFIED, "Authorization": f"License {first_token}"}
    assert await _get(s, gk.url + "/articles/1", revoked) == 401
    # The store goes away: rate limits and behaviour windows fall back to this process.
    redis_server.stop()
    for i in range(4):
        await _get(s, f"{gk.url}/answer/down-{i}", ASSISTANT)
        assert await _get(s, f"{gk.url}/page/down-{i}", BROWSER_HEADERS) == 200
    await _scraped(s, prom, gk.admin_url)

    async def refreshed_twice() -> bool:
        # A rate needs two samples of a refresh counter that moved between them.
        got = await prom.query(s, f'sum(increase(gatekeeper_crawler_ranges_updates_total'
                                  f'{{job="{JOB}"}}[5m])) > 0')
        return bool(got)

    await prom.until(s, "two range-list refreshes scraped", refreshed_twice)
    await _check_panels(s, prom)
    await _check_rules(s, prom)
    assert time.monotonic() - started < 45


async def _gate_time_excludes_the_upstream(s: aiohttp.ClientSession, admin_url: str) -> None:
    """The three forwarded requests that waited a second each on the upstream (504s)
    are in the whole requests' time, not in the gate's own."""
    async with s.get(admin_url + "/metrics") as r:
        text = await r.text()
    sums = {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.labels.get("action") == "allow"
            and sample.name.endswith("_duration_seconds_sum")}
    assert sums["gatekeeper_request_duration_seconds_sum"] > 3.0
    assert sums["gatekeeper_gate_duration_seconds_sum"] < 1.0


async def _check_panels(s: aiohttp.ClientSession, prom: Prometheus) -> None:
    dash = _dashboard()
    problems = []
    for panel in _panels():
        for t in panel["targets"]:
            key = (panel["title"], t["refId"])
            result = await prom.query(s, _grafana(t["expr"]))
            values = [_value(r) for r in result]
            moved = any(not math.isnan(v) and v != 0 for v in values)
            if not moved and key not in NO_DATA_ALLOWED:
                problems.append(f"{key}: {values or 'no series'}\n  {_grafana(t['expr'])}")
    assert not problems, "panel queries without data:\n" + "\n".join(problems)
    # The template variables resolve to the scraped job and instance.
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    for name, label in (("job", "job"), ("instance", "instance")):
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variables[name]["definition"])
        assert match, variables[name]["definition"]
        assert match[2] == label, variables[name]["definition"]
        body = await prom.api(s, f"/api/v1/label/{label}/values",
                              **{"match[]": _grafana(match[1])})
        assert body["status"] == "success", (name, body)
        assert body["data"], (name, body)
    assert JOB in (await prom.api(s, "/api/v1/label/job/values"))["data"]
    for note in dash["annotations"]["list"]:
        if "expr" in note:
            await prom.query(s, _grafana(note["expr"]))


async def _check_rules(s: aiohttp.ClientSession, prom: Prometheus) -> None:
    rules = _alert_rules()
    for rule in rules:
        await prom.query(s, rule["expr"])  # parses
        # Each selector in it matches series: no misspelt metric or label value.
        for selector in re.findall(r"\bgatekeeper_[a-z_]+(?:\{[^}]*\})?", rule["expr"]):
            assert await prom.query(s, selector), f"{rule['alert']}: {selector} matches nothing"

    async def evaluated() -> bool:
        body = await prom.api(s, "/api/v1/rules", type="alert")
        loaded = [r for g in body["data"]["groups"] for r in g["rules"]]
        bad = [r for r in loaded if r["health"] != "ok"]
        assert not bad, bad
        active = {r["name"] for r in loaded if r["state"] in ("pending", "firing")}
        names = {r["name"] for r in loaded}
        assert names == {r["alert"] for r in rules}, names
        return active >= PROVOKED

    await prom.until(s, f"alerts {sorted(PROVOKED)} active", evaluated, timeout=10)
