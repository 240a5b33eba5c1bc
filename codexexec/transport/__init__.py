"""Transports carry whole JSON-RPC messages; the RPC layer never sees framing."""
