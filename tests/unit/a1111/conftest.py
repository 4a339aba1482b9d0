"""The in-process app with a key store (``make_app``), shared with the auth tests."""

from tests.unit.auth.conftest import make_app  # noqa: F401
