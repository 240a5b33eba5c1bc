"""Noise core for the codex exec-server relay: hybrid IK (X25519 + ML-KEM-768), AES-GCM."""
