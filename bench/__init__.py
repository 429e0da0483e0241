"""Invigilator's benchmark suite (issue 6). Run each from the repository root:

    .venv/bin/python -m bench.heartbeat     # heartbeat throughput/latency over HTTP + baselines
    .venv/bin/python -m bench.sweeper       # sweep pass and find queries at 100k and 1M sessions
    .venv/bin/python -m bench.report        # `invigilator report` at 100k and 1M sessions

BENCHMARKS.md explains each, the machine they ran on, and the results. Never part of the tests
(tests/test_bench_smoke.py only keeps the heartbeat harness from rotting).
"""
