"""Sentence vectors are cached on disk, so re-evaluating an unchanged batch loads no model."""

import numpy as np
import pytest

from evals import semantic
from evals.semantic import SentenceEncoder


def test_cached_texts_need_no_model(tmp_path, monkeypatch):
    cache = tmp_path / "vectors.parquet"
    first = SentenceEncoder(cache_file=str(cache)).encode(["a cat on a sofa", "a red car", "a cat on a sofa"])
    assert first.shape == (3, semantic.DIM) and np.allclose(first[0], first[2])

    monkeypatch.setattr(semantic, "_caches", {})  # as in a new process

    def no_model(self, texts):
        raise AssertionError(f"model asked for {texts}")

    monkeypatch.setattr(SentenceEncoder, "_compute", no_model)
    again = SentenceEncoder(cache_file=str(cache)).encode(["a red car", "a cat on a sofa"])
    assert np.array_equal(again, first[[1, 0]])
    with pytest.raises(AssertionError, match="a new text"):
        SentenceEncoder(cache_file=str(cache)).encode(["a new text"])
