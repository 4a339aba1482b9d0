"""pixelmill's benchmark suite (not a test suite).

``python -m bench.serve`` measures the serving stack on the random-weight *bench* demo
model against baselines measured in the same run (the in-process pipeline, and a naive
FastAPI server built the way the common tutorial builds it), prints ratios, checks the
targets, and appends the result to ``bench/RESULTS.md``.
"""
