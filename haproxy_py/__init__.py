"""haproxy_py: a highly available WebSocket/HTTP proxy cluster."""

__version__ = "0.1.0"
