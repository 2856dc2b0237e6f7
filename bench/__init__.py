"""Benchmarks: swallow-server against raw mlx-lm and mlx_lm.server (`python -m bench --help`)."""
