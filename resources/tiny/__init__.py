"""Tiny random-weight models of the real architectures, built at test time (no downloads)."""
