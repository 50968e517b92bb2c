"""The lab's demo backend: a chat page, WebSocket /chat and /echo, and GET /whoami.

It runs as one process per app backend. The page shows which proxy node and
which backend it is talking through, so that a failover can be watched: the
WebSocket handshake's `Via` header is not readable from JavaScript, so after
every (re)connect the page asks `/whoami`, whose response carries the `Via:
1.1 <node>` header the proxy adds. Chat messages are broadcast to the clients
of this backend (the lab balances by source address, so one browser's tabs
share a backend).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from aiohttp import WSMsgType, web

BACKEND = web.AppKey("backend", str)
CLIENTS = web.AppKey("clients", set[web.WebSocketResponse])


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"backend": request.app[BACKEND]})


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def chat(request: web.Request) -> web.WebSocketResponse:
    """Broadcast every text message to all chat clients of this backend."""
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    clients = request.app[CLIENTS]
    backend = request.app[BACKEND]
    await ws.send_json({"type": "hello", "backend": backend})
    clients.add(ws)
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            text = msg.data[:2000]
            out = {"type": "message", "text": text, "backend": backend, "at": time.time()}
            await asyncio.gather(
                *(c.send_json(out) for c in list(clients) if not c.closed), return_exceptions=True
            )
    finally:
        clients.discard(ws)
    return ws


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def _close_clients(app: web.Application) -> None:
    clients: set[web.WebSocketResponse] = app[CLIENTS]
    for ws in tuple(clients):
        await ws.close(code=1001, message=b"backend stopping")


def make_app(backend: str) -> web.Application:
    app = web.Application()
    app[BACKEND] = backend
    app[CLIENTS] = set[web.WebSocketResponse]()
    app.router.add_get("/", page)
    app.router.add_get("/whoami", whoami)
    app.router.add_get("/chat", chat)
    app.router.add_get("/echo", echo)
    app.on_shutdown.append(_close_clients)
    return app


async def serve(backend: str, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(backend), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"demo app {backend} serving on {host}:{port}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="The lab's demo chat backend.")
    parser.add_argument("--name", required=True, help="backend name shown by /whoami")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    asyncio.run(serve(args.name, args.host, args.port))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>haproxy_py lab chat</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:15px system-ui,sans-serif;margin:0;background:#f4f5f7;color:#222}
 header{background:#1d3557;color:#fff;padding:12px 18px}
 header h1{font-size:18px;margin:0 0 6px}
 #route{font-family:monospace}
 .dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:6px}
 .up{background:#2a9d8f}.down{background:#e63946}
 main{max-width:760px;margin:16px auto;padding:0 12px}
 #log{background:#fff;border:1px solid #ddd;height:55vh;overflow-y:auto;padding:8px;
      font-family:monospace;font-size:13px}
 .sys{color:#777}.msg b{color:#1d3557}
 form{display:flex;gap:8px;margin-top:10px}
 input{flex:1;padding:8px;font-size:15px}button{padding:8px 16px}
</style></head>
<body>
<header><h1>haproxy_py lab chat</h1>
 <span class="dot down" id="dot"></span><span id="state">connecting</span>
 &middot; <span id="route">proxy ? &rarr; backend ?</span></header>
<main>
 <div id="log"></div>
 <form id="form"><input id="text" autocomplete="off" placeholder="say something">
 <button>Send</button></form>
 <p class="sys">Try <code>hactl failover</code> or <code>hactl lab kill NODE</code> in a
 terminal: this page reconnects on its own and shows the new proxy node.</p>
</main>
<script>
"use strict";
const chat = window.chat = {state: "connecting", node: null, backend: null,
                            messages: [], closes: [], connects: 0};
const log = document.getElementById("log");
let ws = null, delay = 250;
function line(cls, text) {
  const d = document.createElement("div"); d.className = cls;
  d.textContent = new Date().toLocaleTimeString() + "  " + text;
  log.appendChild(d); log.scrollTop = log.scrollHeight;
}
function show() {
  document.getElementById("state").textContent = chat.state;
  document.getElementById("dot").className = "dot " + (chat.state === "connected" ? "up" : "down");
  document.getElementById("route").textContent =
    "proxy " + (chat.node || "?") + " \\u2192 backend " + (chat.backend || "?");
}
async function whoami() {
  try {
    const r = await fetch("/whoami", {cache: "no-store"});
    const via = r.headers.get("via") || "";
    chat.node = via.split(/\\s+/).pop() || "?";
    chat.backend = (await r.json()).backend;
  } catch (e) { chat.node = "?"; }
  show();
}
function connect() {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/chat";
  ws = new WebSocket(url);
  ws.onopen = () => {
    delay = 250; chat.state = "connected"; chat.connects += 1; show();
    line("sys", "connected"); whoami();
  };
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === "hello") { chat.backend = m.backend; show(); return; }
    chat.messages.push(m.text);
    const d = document.createElement("div"); d.className = "msg";
    const b = document.createElement("b"); b.textContent = "[" + m.backend + "] ";
    d.appendChild(b); d.appendChild(document.createTextNode(m.text));
    log.appendChild(d); log.scrollTop = log.scrollHeight;
  };
  ws.onclose = (ev) => {
    chat.closes.push(ev.code); chat.state = "reconnecting"; show();
    const wait = Math.round(delay * (0.5 + Math.random()));
    line("sys", "closed (" + ev.code + (ev.reason ? " " + ev.reason : "") +
         "), reconnecting in " + wait + " ms");
    setTimeout(connect, wait); delay = Math.min(delay * 2, 5000);
  };
}
document.getElementById("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = document.getElementById("text");
  if (input.value && ws && ws.readyState === WebSocket.OPEN) {
    ws.send(input.value); input.value = "";
  }
});
show(); connect();
</script></body></html>
"""


if __name__ == "__main__":
    main()
