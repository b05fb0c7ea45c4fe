"""Benchmarks (run as scripts, e.g. ``python -m benchmarks.xfer_digits``); not part of the tests."""
