#!/usr/bin/env bash
# Set up everything, start a small demo origin on 127.0.0.1:8000 and Gatekeeper with the
# embedded default policy in front of it on 127.0.0.1:8080. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

origin_port="${DEMO_ORIGIN_PORT:-8000}"
listen="${DEMO_LISTEN:-127.0.0.1:8080}"
admin="${DEMO_ADMIN_LISTEN:-127.0.0.1:9108}"

.venv/bin/python scripts/demo_origin.py --port "$origin_port" &
origin_pid=$!
trap 'kill "$origin_pid" 2>/dev/null || true' EXIT

cat <<MSG

Gatekeeper is starting on http://$listen in front of the demo origin on 127.0.0.1:$origin_port.
Try, in another terminal:

  # a browser: forwarded to the origin (200)
  curl -i http://$listen/articles/ai-and-you -A 'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0'

  # "GPTBot" from your machine, which is not one of OpenAI's published addresses:
  # a spoofer, blocked by the default policy (403); the real GPTBot would be blocked
  # too, as an AI training crawler
  curl -i http://$listen/articles/ai-and-you -A 'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)'

  # robots.txt is never gated, not even for GPTBot (200)
  curl -i http://$listen/robots.txt -A 'GPTBot/1.2'

  # what the gate decides, and why, without sending anything
  .venv/bin/gatekeeper explain --ua 'GPTBot/1.2' --path /articles/ai-and-you
  .venv/bin/gatekeeper explain --ua 'GPTBot/1.2' --path /articles/ai-and-you --ip 20.171.206.7

  # metrics and health on the admin listener
  curl -s http://$admin/metrics | grep '^gatekeeper_requests_total'

MSG
.venv/bin/gatekeeper run --upstream "http://127.0.0.1:$origin_port" --listen "$listen" \
    --admin-listen "$admin" --log-format console
