"""Datasets: readers of the referring-segmentation benchmarks."""
