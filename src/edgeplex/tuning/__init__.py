"""Tuning: measured profiles of execution configs, their Pareto fronts, and the allocation
policies that turn them into placements."""
