"""Linear probing: feature extraction and cache, linear heads, metrics."""
