"""Quality evaluation of pixelsift's outputs against a reference baseline (see docs/evaluation.md).

The Dagster parts are in ``evals.definitions``; this package import stays light so the
CLI and the pure metric modules load without them.
"""
