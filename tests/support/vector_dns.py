"""The decision vectors' DNS zone (tests/vectors/dns-zone.yaml) as a
`DnsTestServer` zone: PTR records and, unless `forward: false`, the matching A/AAAA."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml

from tests.support.dns_server import Zone, reverse_name

ZONE_FILE = Path(__file__).resolve().parents[1] / "vectors" / "dns-zone.yaml"


def vector_zone(path: Path = ZONE_FILE) -> Zone:
    zone: dict[str, list[tuple[str, str, int]]] = {}
    for entry in yaml.safe_load(path.read_text(encoding="utf-8")):
        ip, ptr = str(entry["ip"]), str(entry["ptr"])
        zone.setdefault(reverse_name(ip), []).append(("PTR", ptr, 300))
        if entry.get("forward", True):
            rtype = "AAAA" if ipaddress.ip_address(ip).version == 6 else "A"
            zone.setdefault(ptr, []).append((rtype, ip, 300))
    return zone
