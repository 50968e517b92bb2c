"""The proxy data plane (`haproxy-py`): HTTP and WebSocket reverse proxy with load balancing.

The hot path is plain asyncio Protocols, not aiohttp's server or client:
`frontend.ClientConnection` parses requests with httptools, routes them
(`routing`), picks a server (`balancer`) and forwards over pooled keep-alive
`upstream.UpstreamConnection`s, streaming bodies both ways. After a backend's
101 the two sockets become a byte relay (`relay`). aiohttp serves the admin API
(`admin`) and runs the active health checks (`health`). `server.ProxyServer`
ties it together; `cli` is the `haproxy-py` command.
"""
