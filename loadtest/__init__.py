"""Load tests and the benchmark: `python -m loadtest.bench` (figures) and `python -m loadtest.run` (locust).

Every run targets 127.0.0.1 only and is bounded in time and request count. See docs/performance.md.
"""
