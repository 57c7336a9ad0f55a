"""The deploy recipes hold together, checked without a container engine.

Every YAML and JSON file under deploy/ parses. The compose file mounts files that
exist, publishes the ports Gatekeeper's settings listen on, and points Prometheus,
Grafana, the upstream and the store at services that exist. The Kubernetes manifests
probe /healthz and /readyz on a declared port, run as non-root with resources set, and
their selectors, port names and mounted paths agree; the policy and settings they carry
pass Gatekeeper's own loaders. The systemd unit reloads with SIGHUP and is hardened.
The image's entrypoint runs: the package built from what the Dockerfile copies,
installed into a fresh virtualenv, answers `gatekeeper --version` and serves the
image's HEALTHCHECK.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import gatekeeper
from gatekeeper.catalog_loader import load_catalog
from gatekeeper.cli import _parser
from gatekeeper.policy.loader import load_policy_text
from gatekeeper.policy.reload import PolicyHolder, ReloadResult, watch
from gatekeeper.settings import Settings, from_env, split_hostport
from gatekeeper.supervisor import check_shared_limits

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "gatekeeper.service"
DOCKERFILE = ROOT / "Dockerfile"
# The supervisor (workers > 1) waits this long past shutdown_timeout for its workers.
SUPERVISOR_GRACE = 5.0


# -- helpers --------------------------------------------------------------------------


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    out = []
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _image_env() -> dict[str, str]:
    """The GATEKEEPER_* variables the image sets (ENV): they win over a --config file."""
    env: dict[str, str] = {}
    for word, rest in _dockerfile():
        if word == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return {k: v for k, v in env.items() if k.startswith("GATEKEEPER_")}


def _image_uid() -> int:
    for word, rest in _dockerfile():
        found = re.search(r"useradd\b.*--uid\s+(\d+)", rest)
        if word == "RUN" and found:
            return int(found.group(1))
    raise AssertionError("the Dockerfile creates no user with a fixed --uid")


def _healthcheck_url() -> str:
    for word, rest in _dockerfile():
        if word == "HEALTHCHECK":
            found = re.search(r"http://[^'\"\s]+", rest)
            assert found, rest
            return found.group(0)
    raise AssertionError("the Dockerfile has no HEALTHCHECK")


def _effective_settings(command: list[str], environment: dict[str, str]) -> Settings:
    """The settings `gatekeeper <command>` resolves with `environment` (no config file)."""
    args = _parser().parse_args(command)
    assert args.command == "run"
    assert args.config is None, "the compose recipe passes settings as flags and environment"
    flags = {"upstream": args.upstream, "listen": args.listen,
             "admin_listen": args.admin_listen, "policy": args.policy,
             "trusted_proxies": tuple(args.trusted_proxy) if args.trusted_proxy else None,
             "log_format": args.log_format, "log_level": args.log_level,
             "workers": args.workers, "mode": args.mode}
    environment = {**_image_env(), **environment}
    settings = Settings().with_overrides(from_env(environment), "compose environment")
    given = {k: v for k, v in flags.items() if v is not None}
    return settings.with_overrides(given, "compose command")


def _host_port(value: str) -> tuple[str, int]:
    parts = urlsplit(value if "://" in value else f"tcp://{value}")
    assert parts.hostname, value
    assert parts.port, value
    return parts.hostname, parts.port


# -- every file parses ----------------------------------------------------------------


def _deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in suffixes)


def test_every_yaml_and_json_file_under_deploy_parses() -> None:
    yamls = _deploy_files(".yml", ".yaml")
    assert len(yamls) >= 15, yamls
    for path in yamls:
        documents = _docs(path)
        assert documents, f"{path}: no YAML document"
        assert all(isinstance(d, dict) for d in documents), f"{path}: a document is no mapping"
    for path in _deploy_files(".json"):
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict), path


# -- docker compose -------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (data,) = _docs(DEPLOY / "docker-compose.yml")
    assert isinstance(data, dict)
    return data


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in compose["services"], f"no compose service {name!r}"
    service: dict[str, Any] = compose["services"][name]
    return service


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _binds(service: dict[str, Any]) -> dict[PurePosixPath, Path]:
    """The service's bind mounts: container path -> host path (relative to deploy/)."""
    out: dict[PurePosixPath, Path] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[PurePosixPath(target)] = (DEPLOY / source).resolve()
    return out


def _host_file(service: dict[str, Any], container_path: str) -> Path:
    """The host file behind `container_path`, through the service's bind mounts."""
    path = PurePosixPath(container_path)
    for target, source in _binds(service).items():
        if path == target or target in path.parents:
            return source.joinpath(*path.relative_to(target).parts)
    raise AssertionError(f"{container_path} is not inside any bind mount")


def _published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) for each published port."""
    out = []
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        assert len(parts) == 3, f"{entry}: publish with an explicit host address"
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def _container_ports(service: dict[str, Any]) -> set[int]:
    return {int(p) for p in service.get("expose", [])} | {c for _, _, c in _published(service)}


def test_compose_references_files_that_exist(compose: dict[str, Any]) -> None:
    missing = []
    named = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            context = DEPLOY / (build if isinstance(build, str) else build["context"])
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get(
                "dockerfile", "Dockerfile")
            if not (context / dockerfile).is_file():
                missing.append(f"{name}: build {context / dockerfile}")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                if not (DEPLOY / source).exists():
                    missing.append(f"{name}: volume {source}")
            else:
                assert source in named, f"{name}: volume {source!r} is not declared"
        for dependency in service.get("depends_on", []):
            assert dependency in compose["services"], f"{name}: depends on {dependency}"
    assert not missing, "compose references missing files:\n" + "\n".join(missing)


def test_compose_ports_agree_with_gatekeepers_settings(compose: dict[str, Any]) -> None:
    gk = _service(compose, "gatekeeper")
    settings = _effective_settings(gk["command"], _environment(gk))
    listen_port = split_hostport(settings.listen)[1]
    admin_host, admin_port = split_hostport(settings.admin_listen, "admin_listen")
    assert (listen_port, admin_port) == (8080, 9108)
    # Prometheus reaches the admin listener over the compose network.
    assert admin_host == "0.0.0.0"
    assert {c for _, _, c in _published(gk)} == {listen_port, admin_port}
    # The image says what it listens on and checks its health on the admin listener.
    exposed = {int(p) for w, rest in _dockerfile() if w == "EXPOSE" for p in rest.split()}
    assert {listen_port, admin_port} <= exposed
    assert _host_port(_healthcheck_url()) == ("127.0.0.1", admin_port)
    assert urlsplit(_healthcheck_url()).path == "/healthz"
    for name, service in compose["services"].items():
        for address, _, _ in _published(service):
            assert address == "127.0.0.1", f"{name}: published beyond the host's loopback"
    # A read-only root file system: what Gatekeeper writes lives on volumes or tmpfs.
    assert gk["read_only"] is True
    writable = [PurePosixPath(v.split(":")[1]) for v in gk["volumes"] if not v.endswith(":ro")]
    writable += [PurePosixPath(t) for t in gk["tmpfs"]]
    for path in (settings.state_path(), settings.ranges_cache_path()):
        target = PurePosixPath(path)
        assert any(w == target or w in target.parents for w in writable), path
    # SIGTERM drains for shutdown_timeout; compose must wait longer before SIGKILL.
    grace = gk["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) > settings.shutdown_timeout


def test_compose_upstream_store_and_policy_point_at_what_exists(
        compose: dict[str, Any]) -> None:
    gk = _service(compose, "gatekeeper")
    settings = _effective_settings(gk["command"], _environment(gk))
    host, port = _host_port(settings.upstream)
    assert port in _container_ports(_service(compose, host)), settings.upstream
    assert host not in {n for n, s in compose["services"].items() if s.get("ports")}, (
        "the origin must not be published: nothing may bypass the gate")
    assert settings.store == "redis"
    host, port = _host_port(settings.redis_url)
    assert port in _container_ports(_service(compose, host)), settings.redis_url
    assert settings.policy
    assert settings.policy_watch_interval > 0
    policy_file = _host_file(gk, settings.policy)
    policy = load_policy_text(policy_file.read_text(encoding="utf-8"), str(policy_file),
                              load_catalog(), base_dir=policy_file.parent)
    check_shared_limits(settings, policy)
    # The demo origin serves the pages the comments and the index link to.
    site = _host_file(_service(compose, "site"), "/usr/share/nginx/html")
    for page in ("index.html", "robots.txt", "articles/ai-and-you.html", "premium/report.html"):
        assert (site / page).is_file(), page


def test_compose_prometheus_scrapes_gatekeeper_and_loads_the_mounted_rules(
        compose: dict[str, Any]) -> None:
    prometheus = _service(compose, "prometheus")
    (config,) = _docs(_host_file(prometheus, "/etc/prometheus/prometheus.yml"))
    gk = _service(compose, "gatekeeper")
    admin_port = split_hostport(_effective_settings(
        gk["command"], _environment(gk)).admin_listen)[1]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "gatekeeper" in jobs
    targets = [t for sc in jobs["gatekeeper"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"gatekeeper:{admin_port}"]
    for job in jobs.values():
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = _host_port(target)
                assert port in _container_ports(_service(compose, host)) or (
                    host == "localhost"), target
    assert config.get("rule_files"), "the alert rules are not loaded"
    for rule_file in config["rule_files"]:
        path = _host_file(prometheus, rule_file)
        assert path.is_file(), f"{rule_file} -> {path} does not exist"
        (rules,) = _docs(path)
        assert rules["groups"], path
    assert 9090 in _container_ports(prometheus)


def test_compose_grafana_provisions_the_datasource_and_the_dashboard(
        compose: dict[str, Any]) -> None:
    grafana = _service(compose, "grafana")
    provisioning = _host_file(grafana, "/etc/grafana/provisioning")
    uids = set()
    for path in sorted((provisioning / "datasources").glob("*.y*ml")):
        for source in _docs(path)[0]["datasources"]:
            host, port = _host_port(source["url"])
            assert port in _container_ports(_service(compose, host)), source["url"]
            uids.add(source["uid"])
    assert uids
    dashboards = []
    for path in sorted((provisioning / "dashboards").glob("*.y*ml")):
        for provider in _docs(path)[0]["providers"]:
            folder = PurePosixPath(provider["options"]["path"])
            dashboards += [source for target, source in _binds(grafana).items()
                           if folder in target.parents and target.suffix == ".json"]
    assert dashboards == [DEPLOY / "grafana" / "gatekeeper.json"]
    assert dashboards[0].is_file(), f"{dashboards[0]} does not exist"
    home = _environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _host_file(grafana, home) == dashboards[0]
    # A dashboard names its data source by a template variable or by a provisioned uid
    # (an exported dashboard's ${DS_...} inputs are not resolved by provisioning).
    dashboard = json.loads(dashboards[0].read_text(encoding="utf-8"))
    variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}

    def check(node: Any) -> None:
        if isinstance(node, dict):
            source = node.get("datasource")
            if isinstance(source, dict) and isinstance(source.get("uid"), str):
                uid = source["uid"]
                name = uid.strip("${}")
                assert uid in uids or (uid.startswith("$") and name in variables), (
                    f"the dashboard names data source {uid!r}; provisioned: {sorted(uids)}")
            for value in node.values():
                check(value)
        elif isinstance(node, list):
            for value in node:
                check(value)

    check(dashboard)


# -- Kubernetes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            out += _docs(path)
    return out


def _kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def _named(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [m for m in _kind(manifests, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _gatekeeper_pod(manifests: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = _named(manifests, "Deployment", "gatekeeper")["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "gatekeeper"]
    return spec, container


def _configmap_file(manifests: list[dict[str, Any]], spec: dict[str, Any],
                    container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The ConfigMap volume and key that `path` in the container reads."""
    target = PurePosixPath(path)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        if PurePosixPath(mount["mountPath"]) in target.parents:
            volume = volumes[mount["name"]]
            assert "configMap" in volume, f"{path} is not from a ConfigMap"
            assert "subPath" not in mount, f"{path}: a subPath mount is never updated"
            key = str(target.relative_to(mount["mountPath"]))
            configmap = _named(manifests, "ConfigMap", volume["configMap"]["name"])
            assert key in configmap["data"], f"{path}: no key {key!r} in the ConfigMap"
            return configmap, key
    raise AssertionError(f"{path} is not inside any volume mount")


@pytest.fixture(scope="module")
def k8s_settings(manifests: list[dict[str, Any]]) -> Settings:
    spec, container = _gatekeeper_pod(manifests)
    args = container["args"]
    assert args[:2] == ["run", "--config"], args
    configmap, key = _configmap_file(manifests, spec, container, args[2])
    values = yaml.safe_load(configmap["data"][key])
    env = {**_image_env(), **{e["name"]: e["value"] for e in container.get("env", [])}}
    settings = Settings().with_overrides(values, f"ConfigMap {configmap['metadata']['name']}")
    return settings.with_overrides(from_env(env), "container env")


def test_kustomization_lists_every_manifest_and_the_image_version() -> None:
    (kustomization,) = _docs(K8S / "kustomization.yaml")
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    (image,) = kustomization["images"]
    assert image["newTag"] == gatekeeper.__version__


def test_k8s_manifests_share_one_namespace(manifests: list[dict[str, Any]]) -> None:
    (kustomization,) = _docs(K8S / "kustomization.yaml")
    for m in manifests:
        if m["kind"] == "Namespace":
            assert m["metadata"]["name"] == kustomization["namespace"]
        else:
            assert m["metadata"].get("namespace") == kustomization["namespace"], m["kind"]


def test_k8s_deployments_probe_declared_ports_as_non_root_with_resources(
        manifests: list[dict[str, Any]]) -> None:
    deployments = _kind(manifests, "Deployment")
    assert {d["metadata"]["name"] for d in deployments} >= {"gatekeeper"}
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        spec = deployment["spec"]
        assert _matches(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
        pod = spec["template"]["spec"]
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            ports = container["ports"]
            declared = {p["name"] for p in ports} | {p["containerPort"] for p in ports}
            probes = [container[k] for k in ("livenessProbe", "readinessProbe", "startupProbe")
                      if k in container]
            assert {"livenessProbe", "readinessProbe"} <= container.keys(), where
            for probe in probes:
                handler = probe.get("httpGet") or probe.get("tcpSocket")
                if handler is not None:
                    assert handler["port"] in declared, f"{where}: probe port {handler['port']}"
                else:
                    assert "exec" in probe, where
            context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            assert context.get("runAsNonRoot") is True, where
            assert isinstance(context.get("runAsUser"), int), where
            assert context["runAsUser"] > 0, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= container["resources"][kind].keys(), where
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: no volume {mount['name']}"


def test_k8s_gatekeeper_probes_health_and_readiness_on_its_admin_port(
        manifests: list[dict[str, Any]], k8s_settings: Settings) -> None:
    spec, container = _gatekeeper_pod(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == split_hostport(k8s_settings.listen)[1]
    admin_host, admin_port = split_hostport(k8s_settings.admin_listen, "admin_listen")
    assert ports["admin"] == admin_port
    assert admin_host == "0.0.0.0"
    for key, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = container[key]["httpGet"]
        assert probe["path"] == path
        assert ports.get(probe["port"], probe["port"]) == admin_port
    # The image's user, by number: a named USER cannot be checked for non-root.
    assert spec["securityContext"]["runAsUser"] == _image_uid()
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > k8s_settings.shutdown_timeout + SUPERVISOR_GRACE
    # A read-only root file system: what Gatekeeper writes lives on writable volumes.
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = [PurePosixPath(m["mountPath"]) for m in container["volumeMounts"]
                if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]]
    for path in (k8s_settings.state_dir, k8s_settings.ranges_cache_dir, "/tmp"):
        target = PurePosixPath(path)
        assert any(w == target or w in target.parents for w in writable), path


def test_k8s_policy_and_settings_pass_gatekeepers_loaders(
        manifests: list[dict[str, Any]], k8s_settings: Settings) -> None:
    spec, container = _gatekeeper_pod(manifests)
    assert k8s_settings.policy
    assert k8s_settings.policy_watch_interval > 0
    configmap, key = _configmap_file(manifests, spec, container, k8s_settings.policy)
    assert configmap["metadata"]["name"] == "gatekeeper-policy"
    policy = load_policy_text(configmap["data"][key], f"configmap-policy.yaml:{key}",
                              load_catalog())
    check_shared_limits(k8s_settings, policy)
    # Replicas share their counters: the store is Redis, at a Service that exists.
    assert k8s_settings.store == "redis"
    host, port = _host_port(k8s_settings.redis_url)
    service = _named(manifests, "Service", host)
    assert port in {p["port"] for p in service["spec"]["ports"]}


def test_k8s_services_select_pods_and_name_their_ports(
        manifests: list[dict[str, Any]]) -> None:
    pods = [d["spec"]["template"] for d in _kind(manifests, "Deployment")]
    services = _kind(manifests, "Service")
    assert {s["metadata"]["name"] for s in services} >= {"gatekeeper", "gatekeeper-admin"}
    for service in services:
        selected = [p for p in pods if _matches(service["spec"]["selector"],
                                                p["metadata"]["labels"])]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects no pods"
        declared = {p["name"] for c in selected[0]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in declared, f"{service['metadata']['name']}: {port}"


def test_k8s_servicemonitor_scrapes_the_admin_port_as_job_gatekeeper(
        manifests: list[dict[str, Any]], compose: dict[str, Any]) -> None:
    (monitor,) = _kind(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [s for s in _kind(manifests, "Service")
                if _matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in selected] == ["gatekeeper-admin"]
    port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] == "admin"
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"
    # The same job name as the compose demo's Prometheus, so alerts and dashboards agree.
    job = selected[0]["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    (config,) = _docs(_host_file(_service(compose, "prometheus"),
                                 "/etc/prometheus/prometheus.yml"))
    assert job in {j["job_name"] for j in config["scrape_configs"]}


def _policy_ports(rule: dict[str, Any], container_ports: dict[str, int]) -> set[int]:
    """The container ports an ingress rule opens, named ports resolved; a rule without
    `ports` opens every port."""
    assert rule.get("ports"), f"an ingress rule without ports opens every port: {rule}"
    return {container_ports.get(p["port"], p["port"]) for p in rule["ports"]}


def test_k8s_networkpolicy_keeps_the_admin_port_for_prometheus(
        manifests: list[dict[str, Any]], k8s_settings: Settings) -> None:
    (kustomization,) = _docs(K8S / "kustomization.yaml")
    assert "networkpolicy.yaml" in kustomization["resources"]
    (policy,) = [m for m in _kind(manifests, "NetworkPolicy")
                 if m["metadata"]["name"] == "gatekeeper"]
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    spec = policy["spec"]
    assert "Ingress" in spec["policyTypes"]
    # It isolates the Gatekeeper pods, and no others.
    selected = [d["metadata"]["name"] for d in _kind(manifests, "Deployment")
                if _matches(spec["podSelector"]["matchLabels"],
                            d["spec"]["template"]["metadata"]["labels"])]
    assert selected == ["gatekeeper"]
    _, container = _gatekeeper_pod(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == split_hostport(k8s_settings.admin_listen, "admin_listen")[1]
    assert ports["http"] == split_hostport(k8s_settings.listen)[1]
    # The proxy port is open to every source; the admin port is not.
    open_to_all = set().union(*(_policy_ports(rule, ports) for rule in spec["ingress"]
                                if not rule.get("from")))
    assert open_to_all == {ports["http"]}
    admin_rules = [rule for rule in spec["ingress"]
                   if ports["admin"] in _policy_ports(rule, ports)]
    assert admin_rules, "no rule lets Prometheus scrape the admin port"
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    for rule in admin_rules:
        assert _policy_ports(rule, ports) == {ports["admin"]}
        for peer in rule["from"]:
            # Both selectors in one peer: Prometheus's pods in the monitoring namespace.
            # Either alone, or an empty one, lets far more of the cluster in.
            assert set(peer) == {"namespaceSelector", "podSelector"}, peer
            for selector in peer.values():
                labels = selector["matchLabels"]
                assert labels, f"an empty selector matches everything: {peer}"
                for key, value in labels.items():
                    # The operator adapts these: the README names them.
                    assert f"{key}={value}" in readme or f"{key}: {value}" in readme, \
                        (key, value)



def test_k8s_redis_admits_only_gatekeepers_pods(manifests: list[dict[str, Any]]) -> None:
    # The recipe's Redis has no password: who reaches it can clear revocations.
    (policy,) = [m for m in _kind(manifests, "NetworkPolicy")
                 if m["metadata"]["name"] == "gatekeeper-redis"]
    spec = policy["spec"]
    isolated = [d["metadata"]["name"] for d in _kind(manifests, "Deployment")
                if _matches(spec["podSelector"]["matchLabels"],
                            d["spec"]["template"]["metadata"]["labels"])]
    assert isolated == ["gatekeeper-redis"]
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # this namespace only
    admitted = [d["metadata"]["name"] for d in _kind(manifests, "Deployment")
                if _matches(peer["podSelector"]["matchLabels"],
                            d["spec"]["template"]["metadata"]["labels"])]
    assert "gatekeeper" in admitted
    service = _named(manifests, "Service", "gatekeeper-redis")
    assert [p["port"] for p in rule["ports"]] == [p["port"] for p in service["spec"]["ports"]]


def test_k8s_hpa_scales_the_gatekeeper_deployment_on_cpu(
        manifests: list[dict[str, Any]]) -> None:
    (hpa,) = _kind(manifests, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    deployment = _named(manifests, ref["kind"], ref["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        assert "cpu" in container["resources"]["requests"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


async def test_policy_watcher_follows_a_kubelet_configmap_update(tmp_path: Path) -> None:
    """The kubelet updates a ConfigMap volume by writing a new timestamped directory,
    swapping the `..data` symlink to it, then deleting the old directory. The watcher
    stats the resolved file it last read: once that is gone it reloads through the
    mounted path, which now leads to the new content."""
    catalog = load_catalog()

    def publish(stamp: str, mode: str) -> Path:
        directory = tmp_path / f"..{stamp}"
        directory.mkdir()
        (directory / "policy.yaml").write_text(
            f"version: 1\nmode: {mode}\nrules:\n  - name: r\n    match: "
            "{purposes: [ai-training]}\n    action: block\n", encoding="utf-8")
        link = tmp_path / "..data_tmp"
        link.symlink_to(directory.name)
        os.replace(link, tmp_path / "..data")
        return directory

    first = publish("2024_01_01_00_00_00.1", "enforce")
    (tmp_path / "policy.yaml").symlink_to("..data/policy.yaml")
    mounted = str(tmp_path / "policy.yaml")
    holder = PolicyHolder(load_policy_text((first / "policy.yaml").read_text(), mounted,
                                           catalog), mounted, catalog)
    results: list[ReloadResult] = []
    reloaded = asyncio.Event()

    def on_result(result: ReloadResult) -> None:
        results.append(result)
        reloaded.set()

    task = asyncio.create_task(watch(holder, 0.05, on_result))
    try:
        await asyncio.sleep(0.2)
        publish("2024_01_01_00_01_00.2", "monitor")
        await asyncio.sleep(0.2)  # polls between the swap and the clean-up
        shutil.rmtree(first)
        await asyncio.wait_for(reloaded.wait(), 5)
    finally:
        task.cancel()
    assert [r.ok for r in results] == [True], results
    assert holder.current.mode.value == "monitor"


# -- systemd --------------------------------------------------------------------------


def _unit() -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
            continue
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def test_systemd_unit_reloads_with_sighup_and_is_hardened() -> None:
    service = _unit()["Service"]
    values: dict[str, list[str]] = {}
    for key, value in service:
        values.setdefault(key, []).append(value)
    one = {k: v[-1] for k, v in values.items()}
    assert one["ExecStart"] == ("/usr/local/bin/gatekeeper run "
                                "--config /etc/gatekeeper/settings.yaml")
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "StateDirectory": "gatekeeper",
        "CacheDirectory": "gatekeeper", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "Restart": "on-failure",
        "KillSignal": "SIGTERM", "RestrictSUIDSGID": "yes", "ProtectKernelTunables": "yes",
    }
    for key, value in expected.items():
        assert one.get(key) == value, f"{key}={one.get(key)!r}, expected {value!r}"
    assert one.get("DynamicUser") == "yes" or one.get("User"), "runs as root"
    assert set(one["RestrictAddressFamilies"].split()) <= {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in values["SystemCallFilter"]
    assert float(one["TimeoutStopSec"]) > Settings().shutdown_timeout + SUPERVISOR_GRACE
    # What the service writes goes where systemd made it writable.
    env = dict(e.split("=", 1) for v in values["Environment"] for e in shlex.split(v))
    assert env["GATEKEEPER_STATE_DIR"] == "/var/lib/" + one["StateDirectory"]
    assert env["GATEKEEPER_RANGES_CACHE_DIR"].startswith("/var/cache/" + one["CacheDirectory"])
    Settings().with_overrides(from_env(env), "unit environment")


# -- the image's entrypoint -----------------------------------------------------------


def _copy_build_context(destination: Path) -> None:
    """What the Dockerfile COPYs from the repository before it runs pip install
    (`destination` standing for its WORKDIR)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for word, rest in _dockerfile():
        if word == "RUN" and "pip install" in rest:
            return
        if word != "COPY":
            continue
        *sources, target = rest.split()
        for source in sources:
            src = ROOT / source
            into = destination / target
            if target.endswith("/") or target == "." or len(sources) > 1:
                into = into / src.name
            if src.is_dir():
                shutil.copytree(src, into, symlinks=True, ignore=ignore)
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, into)
    raise AssertionError("the Dockerfile never runs pip install")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel built from the Dockerfile's build context.

    The new environment has no dependencies of its own: a .pth file adds the
    project environment's site-packages after its own, so it works offline while
    `gatekeeper` itself comes from the wheel."""
    tmp = tmp_path_factory.mktemp("image")
    context, wheels, venv = tmp / "context", tmp / "wheels", tmp / "venv"
    context.mkdir()
    _copy_build_context(context)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                    str(context)], check=True, capture_output=True, timeout=120)
    (wheel,) = wheels.glob("gatekeeper-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True,
                   timeout=120)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    (Path(site.stdout.strip()) / "project-deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return venv


def test_image_entrypoint_prints_the_version(installed: Path) -> None:
    where = subprocess.run([str(installed / "bin" / "python"), "-c",
                            "import gatekeeper; print(gatekeeper.__file__)"],
                           check=True, capture_output=True, text=True, cwd=installed)
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout
    result = subprocess.run([str(installed / "bin" / "gatekeeper"), "--version"],
                            capture_output=True, text=True, timeout=30, cwd=installed)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"gatekeeper {gatekeeper.__version__}"


def _image_extras() -> set[str]:
    for word, rest in _dockerfile():
        found = re.search(r"pip install [\"']?\.\[([^\]]*)\]", rest)
        if word == "RUN" and found:
            return {e.strip() for e in found.group(1).split(",")}
    return set()


def test_image_has_the_store_the_recipes_configure(
        compose: dict[str, Any], k8s_settings: Settings) -> None:
    gk = _service(compose, "gatekeeper")
    stores = {_effective_settings(gk["command"], _environment(gk)).store, k8s_settings.store}
    if "redis" in stores:
        assert "redis" in _image_extras(), f"the image installs .[{','.join(_image_extras())}]"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_image_entrypoint_runs_and_passes_the_image_healthcheck(
        installed: Path, tmp_path: Path) -> None:
    """`gatekeeper run` from the built package (embedded default policy), probed with
    the Dockerfile's own HEALTHCHECK command on the admin port it listens on."""
    listen, admin = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    env.update(GATEKEEPER_STATE_DIR=str(tmp_path / "state"),
               GATEKEEPER_RANGES_CACHE_DIR=str(tmp_path / "ranges"),
               GATEKEEPER_RANGES_REFRESH_INTERVAL="0")
    (check,) = [rest for word, rest in _dockerfile() if word == "HEALTHCHECK"]
    command = json.loads(check[check.index("CMD") + 3:].strip())
    assert command[0] == "python"
    command = [str(installed / "bin" / "python"),
               *(c.replace(":9108/", f":{admin}/") for c in command[1:])]
    log = tmp_path / "gatekeeper.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [str(installed / "bin" / "gatekeeper"), "run", "--upstream", "http://127.0.0.1:9",
             "--listen", f"127.0.0.1:{listen}", "--admin-listen", f"127.0.0.1:{admin}"],
            env=env, cwd=tmp_path, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 30
        while True:
            probe = subprocess.run(command, capture_output=True, timeout=10)
            if probe.returncode == 0:
                break
            assert server.poll() is None, log.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, probe.stderr.decode()[-2000:]
            time.sleep(0.2)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0, log.read_text(errors="replace")[-2000:]


def test_systemd_analyze_verifies_the_unit(installed: Path, tmp_path: Path) -> None:
    """`systemd-analyze verify` on the unit, its ExecStart pointed at the built
    entrypoint (verify insists that the command exists)."""
    assert shutil.which("systemd-analyze"), ("systemd-analyze is not installed: the test "
                                             "command installs Debian's systemd package")
    unit = tmp_path / "gatekeeper.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(
        "ExecStart=/usr/local/bin/gatekeeper ",
        f"ExecStart={installed / 'bin' / 'gatekeeper'} "), encoding="utf-8")
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (result.stdout + result.stderr).strip(), "warnings from systemd-analyze"


def test_every_dashboard_panel_is_described_in_the_ops_page() -> None:
    def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [p for item in items for p in (item, *panels(item.get("panels", [])))]

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "gatekeeper.json").read_text())
    ops = (ROOT / "docs" / "operations.md").read_text()
    titles = [p["title"] for p in panels(dashboard["panels"])]
    assert len(titles) > 30
    assert [t for t in titles if t not in ops] == []
