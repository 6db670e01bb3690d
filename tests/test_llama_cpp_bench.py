"""The llama.cpp CPU-class benchmark (benchmarks/llama_cpp_cpu): its random-weight GGUF, and a quick
run of the whole measurement on a tiny model.

The llama.cpp tools are a benchmark-only build (minutes per CPU class on two cores), so CI does
not build them: the tests that need them are skipped, saying how to build them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import gguf_shapes, llama_cpp_build

NOT_BUILT = "llama.cpp tools not built for {0} (benchmark-only build): python -m benchmarks.llama_cpp_build {0}"


def test_random_gguf_with_model_shapes_loads_in_llama_cpp_and_gives_finite_logits(tmp_path):
    from llama_cpp import Llama

    shapes = gguf_shapes.SHAPES["tiny"]
    path = gguf_shapes.write_f16(shapes, tmp_path / "tiny.gguf")
    # logits_all: every token's row is written. Without it llama-cpp-python writes none of them, and
    # `scores` is the array's uninitialised memory (np.ndarray), which held NaNs in one CI run.
    model = Llama(str(path), n_ctx=64, logits_all=True, verbose=False)
    assert model.n_embd() == shapes.hidden and model.n_vocab() == 49152  # SmolLM2's tokenizer
    model.eval(model.tokenize(b"a tabby cat sitting on a wooden floor"))
    scores = model.scores[: model.n_tokens]
    assert np.isfinite(scores).all() and (scores.std(axis=1) > 0).all()


def test_phi35_shapes_count_the_published_parameters():
    assert gguf_shapes.SHAPES["phi35"].params(32064) == pytest.approx(3.82e9, rel=0.002)


@pytest.mark.skipif(not llama_cpp_build.is_built("avx2"), reason=NOT_BUILT.format("avx2"))
def test_avx2_build_has_avx2_and_nothing_newer():
    features = llama_cpp_build.check_features("avx2")
    assert features["AVX2"] == "1"
    assert not {"AVX512", "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI", "AMX_INT8"} & set(features)


@pytest.mark.skipif(not llama_cpp_build.is_built("avx2"), reason=NOT_BUILT.format("avx2"))
def test_quick_run_measures_seconds_per_image_and_peak_memory(tmp_path):
    out = tmp_path / "llama-cpp-cpu.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.llama_cpp_cpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["workload"]["generated"] > result["workload"]["suffix"] > 0
    assert [(r["cpu"], r["quant"], r["npl"]) for r in result["rows"]] == [("avx2", "Q8_0", 1), ("avx2", "Q8_0", 2)]
    for row in result["rows"]:
        assert math.isfinite(row["s_per_image"]) and row["s_per_image"] > row["s_decode"] > 0
        assert row["s_per_image_forced_as_prefill"] <= row["s_per_image"]
        assert row["peak_rss_gib"] > 0
    assert result["llama_bench"][0]["tg4"] > 0


def test_the_metadata_stage_in_process_on_a_gguf_writes_the_workload_documents(tmp_path):
    # benchmarks/llama_cpp_metadata: the llama_cpp backend's decode loop, steered to the workload's
    # documents (it raises if they are not reproduced), on random weights of a tiny shape.
    path = gguf_shapes.write_f16(gguf_shapes.SHAPES["tiny"], tmp_path / "tiny.gguf")
    done = subprocess.run([sys.executable, "-m", "benchmarks.llama_cpp_metadata", "--gguf", str(path), "--count", "3",
                           "--batch", "2", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout)
    assert row["images"] == 3 and row["s_per_image"] > 0 and row["forward_calls"] > 0
    assert row["jump_forward_tokens"] > 0 and row["generated_tokens_per_image"] > 50  # whole documents
