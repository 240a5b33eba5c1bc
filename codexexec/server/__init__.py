"""The exec-server: sessions, processes, and the per-connection request processor."""
