"""Encoders: timm ViTs by size name, and checkpoint export / import."""
