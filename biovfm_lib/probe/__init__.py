"""Probing frozen encoders: features of any block and their cache, linear and kNN probes,
label subsets, metrics."""
