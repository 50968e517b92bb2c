"""An app server for the namespace tests, run inside a node's namespace: HTTP and WebSocket.

`GET /` answers 200 with its name (health checks and the prober), `GET /echo`
is a WebSocket echo (the WebSocket client that follows a planned move).

    python -m tests.lab.agent.backend NAME HOST PORT
"""

from __future__ import annotations

import sys

from aiohttp import WSMsgType, web


def app(name: str) -> web.Application:
    async def index(_request: web.Request) -> web.Response:
        return web.Response(text=name)

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    application = web.Application()
    application.router.add_get("/", index)
    application.router.add_get("/echo", echo)
    return application


if __name__ == "__main__":
    web.run_app(app(sys.argv[1]), host=sys.argv[2], port=int(sys.argv[3]), print=None)
