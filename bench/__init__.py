"""Reproducible throughput and latency figures for leadcycle: ``./run bench`` (docs/benchmarks.md).

Benchmarks print numbers and write them to ``bench/results/``; nothing here asserts on speed.
"""
