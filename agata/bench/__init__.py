"""Benchmarks behind ``agata bench``: each measures and returns figures with targets."""
