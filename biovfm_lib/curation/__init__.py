"""Curation: raw biomedical image sources to one deduplicated, subsettable, sharded corpus."""
