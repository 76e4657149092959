"""Secrets of the cloud: token hashing and the per-device download passwords of the
original system's devices."""
