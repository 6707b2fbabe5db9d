"""Benchmarks: a closed-loop load generator, scenarios and recorded reports."""
