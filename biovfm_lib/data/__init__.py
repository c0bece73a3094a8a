"""Datasets: MedMNIST (real and synthetic) for probing, and their transforms."""
