"""Credentials for environment-registry requests.

Every provider yields the headers of one registry request, resolved per request so a
refreshed token is used at once (see ``base.AuthProvider``). Which provider is used, and
why, is decided in ``resolve``. Secrets never appear in messages, logs or tracebacks:
errors name the credential's source and the fix.
"""
