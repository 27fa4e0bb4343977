"""Benchmarks: each module is runnable with `python -m bench.<name>` and writes bench/results/<name>.json."""
