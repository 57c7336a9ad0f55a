"""Gatekeeper's proxy listener run through `gatekeeper.edge.server.serve`, as a
process of its own, for the signal and drain tests.

Usage: python -m tests.integration.serve_child UPSTREAM_URL SHUTDOWN_TIMEOUT
Prints `LISTENING <port>` once the listener is bound (port 0 is asked for),
`RELOAD` on each SIGHUP, and exits 0 after a graceful stop.
"""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry

from gatekeeper import wiring
from gatekeeper.edge import server
from gatekeeper.observe import logging as gk_logging
from gatekeeper.settings import Settings


def main() -> int:
    upstream, shutdown_timeout = sys.argv[1], float(sys.argv[2])
    settings = Settings(upstream=upstream, listen="127.0.0.1:0",
                        shutdown_timeout=shutdown_timeout)
    gk_logging.configure("json", "info", sys.stderr)
    c = wiring.build(settings, CollectorRegistry())
    service = server.ProxyService(c.gate, c.recorder, settings, c.upstream, c.trusted)

    def started(listeners: server.Listeners) -> None:
        print("LISTENING", listeners.addresses[0][1], flush=True)

    def reload() -> None:
        print("RELOAD", flush=True)

    server.run(server.serve(service, settings, on_reload=reload, on_started=started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
