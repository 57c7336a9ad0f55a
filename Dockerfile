# Gatekeeper: slim, non-root, the console script as entrypoint.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gatekeeper ./gatekeeper
COPY policies ./policies
# The embedded default policy is a symlink into policies/; install copies its content.
RUN pip install ".[speed]" && useradd --system --uid 10001 --no-create-home gatekeeper

USER gatekeeper
EXPOSE 8080 9108
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["gatekeeper"]
# The admin listener binds all interfaces inside the container so the orchestrator can
# scrape and probe it; publish port 9108 only to your monitoring network.
CMD ["run", "--upstream", "http://upstream:8000", "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:9108"]
