"""API keys: generation and hashing, the key store, scopes and per-key rate limits.

Framework-free on purpose: the HTTP side (``pixelmill.api.auth``) and the ``pixelmill
keys`` command both build on these pieces.
"""
