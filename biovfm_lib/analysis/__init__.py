"""Analysis of probe results: reference numbers, scaling slopes, task properties, correlations."""
