# Gatekeeper: slim base, non-root user, the console script as entrypoint.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY gatekeeper ./gatekeeper
# The embedded default policy is a symlink into policies/; installing copies its content.
COPY policies ./policies
# redis: the recipes in deploy/ run replicas sharing a Redis store.
RUN pip install ".[speed,redis]" \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gatekeeper \
 && mkdir -p /var/lib/gatekeeper /var/cache/gatekeeper \
 && chown gatekeeper /var/lib/gatekeeper /var/cache/gatekeeper
# Signing keys, licensees and the usage ledger: mount a volume here to keep them.
ENV GATEKEEPER_STATE_DIR=/var/lib/gatekeeper \
    GATEKEEPER_RANGES_CACHE_DIR=/var/cache/gatekeeper/ip-ranges
VOLUME ["/var/lib/gatekeeper"]

USER gatekeeper
# 8080: proxied traffic. 9108: the admin listener (/metrics, /healthz, /readyz).
EXPOSE 8080 9108
# slim has no curl; the standard library is enough. Any error or non-2xx exits non-zero.
# If you move the admin listener, override this check too.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2)"]
ENTRYPOINT ["gatekeeper"]
# The admin listener binds every interface inside the container so the orchestrator can
# probe and scrape it; publish port 9108 only to your monitoring network.
CMD ["run", "--upstream", "http://upstream:8000", "--admin-listen", "0.0.0.0:9108"]
