"""Benchmarks: each measures against a baseline in the same run and prints ratios.

Run one from the repository root as a module: ``.venv/bin/python -m bench.bridge``.
"""
