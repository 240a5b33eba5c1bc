"""Fixtures shared with the suites these tests attack: the Noise relay stack (rendezvous,
executor, two harness credentials) and the environment managers' clean-up."""

from tests.test_environments import cleanup  # noqa: F401
from tests.test_noise_executor import stack  # noqa: F401
