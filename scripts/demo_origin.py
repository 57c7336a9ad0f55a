"""A small demo origin for trying Gatekeeper: a few HTML pages and a robots.txt."""

from __future__ import annotations

import argparse

from aiohttp import web

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1><p>This page is served by the demo origin behind Gatekeeper.</p>
<ul><li><a href="/">home</a></li><li><a href="/articles/ai-and-you">an article</a></li>
<li><a href="/premium/report">a premium report</a></li></ul></body></html>
"""


async def page(request: web.Request) -> web.Response:
    title = request.path.strip("/") or "home"
    return web.Response(text=PAGE.format(title=title), content_type="text/html")


async def robots(request: web.Request) -> web.Response:
    return web.Response(text="User-agent: *\nAllow: /\n", content_type="text/plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/{tail:.*}", page)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
