"""Hostile input against the real gateway: schemathesis, the auth matrix, limits."""
