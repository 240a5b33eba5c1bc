"""A keyring backend for the tests: keyrings.alt's file backend standing in for an OS keyring.

It is a real backend used through the real `keyring` API (selected with
``PYTHON_KEYRING_BACKEND=tests.keyring_backend.KeyringForTests``), stored in the file named by
``CODEXEXEC_TEST_KEYRING``; only its priority says "a real keyring", which is what codexexec
checks before trusting a backend with a login.
"""

from __future__ import annotations

import os

from keyrings.alt.file import PlaintextKeyring

STORE_ENV = "CODEXEXEC_TEST_KEYRING"


class KeyringForTests(PlaintextKeyring):
    priority = 1  # type: ignore[assignment]

    @property
    def file_path(self) -> str:  # type: ignore[override]
        return os.environ[STORE_ENV]
