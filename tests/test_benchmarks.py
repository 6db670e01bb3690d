"""The benchmark itself stays out of CI; this is its smoke run on the tiny models, plus the pieces
that make full-size runs realistic (published configurations, steering to realistic documents)."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner
from PIL import Image
from transformers import Blip2ForConditionalGeneration, Phi3ForCausalLM

from assets.llm_schemas import ClusterLabelOutput, ImageMetadataOutput
from benchmarks import stages
from benchmarks.cli import bench
from benchmarks.full_size import blip2_opt_27b_config, phi35_mini_config
from benchmarks.config import STAGES
from benchmarks.workload import CLUSTER_EXAMPLES, EXAMPLES, document


def test_smoke_run_on_tiny_models_writes_every_stage_and_the_end_to_end_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELSIFT_TINY_MODELS_DIR", str(tmp_path / "models"))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(bench, [
        "--models", "tiny", "--count", "3", "--naive-count", "1", "--dtype", "float32",
        "--caption-batch", "1,3", "--llm-batch", "3", "--output", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "end to end, per image" in result.output
    figures = json.loads(out.read_text())
    assert figures["complete"] is True
    assert figures["command"].startswith("pixelsift bench --models tiny")
    assert {(s["stage"], s["path"]) for s in figures["stages"]} == {(s, p) for s in STAGES for p in ("naive", "optimised")}
    assert [s["batch_size"] for s in figures["stages"] if s["stage"] == "captions" and s["path"] == "optimised"] == [1, 3]
    metadata = next(s for s in figures["stages"] if s["stage"] == "image_metadata" and s["path"] == "optimised")
    assert metadata["generated_tokens"] > 0 and metadata["details"]["jump_forward_tokens"] > 0
    assert 0 < metadata["details"]["grammar_share_of_model_time"]
    e2e = figures["end_to_end"]
    assert e2e["optimised_seconds_per_image"] > 0 and e2e["speedup"] > 0
    assert set(e2e["chosen_batch_sizes"]) == set(STAGES)


def test_a_run_cut_short_keeps_the_stages_it_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELSIFT_TINY_MODELS_DIR", str(tmp_path / "models"))

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(stages, "llm_stage", out_of_memory)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(bench, ["--models", "tiny", "--count", "2", "--naive-count", "1", "--dtype", "float32",
                                        "--stages", "decode,palette,image_metadata", "--output", str(out)])
    assert result.exit_code != 0 and "out of memory" in str(result.exception)
    figures = json.loads(out.read_text())
    assert figures["complete"] is False
    assert {(s["stage"], s["path"]) for s in figures["stages"]} == {
        (s, p) for s in ("decode", "palette") for p in ("naive", "optimised")
    }


def test_a_steered_run_is_the_real_command_writing_the_workload(tmp_path, monkeypatch):
    """benchmarks/end_to_end --steer --count: `pixelsift run` on random weights, its captions and LLM
    documents steered to the workload's (else the LLM is skipped or writes to its budget)."""
    import pyarrow.parquet as pq

    from benchmarks.end_to_end import run

    monkeypatch.setenv("PIXELSIFT_TINY_MODELS_DIR", str(tmp_path / "models"))
    figures = run("sample", "data/images", None, steer=True, count=12, scratch=tmp_path / "run")
    assert (figures["images"], figures["fallback_rows"]) == (12, 0)
    assert figures["wall_s_per_image"] > figures["stage_sum_s_per_image"] > 0
    assert {"captions", "image_metadata", "cluster_labels"} <= set(figures["step_s"])
    warehouse = tmp_path / "run" / "warehouse"
    rows = pq.read_table(warehouse / "image_metadata" / "batch=sample").to_pylist()
    assert len({r["image_id"] for r in rows}) == 12  # 12 distinct images from the folder's 10: none reused
    names = {e.metadata.suggested_cluster_name for e in EXAMPLES}
    assert all(r["json_valid"] and r["suggested_cluster_name"] in names for r in rows)
    captions = pq.read_table(warehouse / "captions" / "batch=sample").to_pylist()
    assert {r["caption"] for r in captions} <= {e.caption for e in EXAMPLES}
    labels = pq.read_table(warehouse / "cluster_labels" / "batch=sample").to_pylist()
    assert labels and {r["cluster_name"] for r in labels} <= {label.cluster_name for _, label in CLUSTER_EXAMPLES}


def test_full_size_configurations_have_the_published_parameter_counts():
    with torch.device("meta"):
        phi = Phi3ForCausalLM(phi35_mini_config(bos=1, eos=2, pad=3))
        blip = Blip2ForConditionalGeneration(blip2_opt_27b_config(image_token_index=4, bos=1, eos=2, pad=3))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert round(count(phi) / 1e9, 2) == 3.82  # Phi-3.5-mini: 3.8B
    assert round(count(blip.vision_model) / 1e9, 2) == 0.99  # EVA ViT-g/14: 1B
    assert round(count(blip.language_model) / 1e9, 2) == 2.65  # OPT-2.7B


def test_workload_documents_are_valid_for_the_real_schemas():
    for example in EXAMPLES:
        assert ImageMetadataOutput.model_validate_json(document(example.metadata)) == example.metadata
    for _, label in CLUSTER_EXAMPLES:
        assert ClusterLabelOutput.model_validate_json(document(label)) == label


def test_photo_writer_makes_decodable_jpegs_of_the_asked_size(tmp_path, monkeypatch):
    from benchmarks import decoding

    monkeypatch.setattr("sys.argv", ["decoding", "--write", str(tmp_path), "--count", "3", "--width", "96",
                                     "--height", "64"])
    decoding.main()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["000.jpg", "001.jpg", "002.jpg"]
    assert all(Image.open(f).size == (96, 64) and Image.open(f).format == "JPEG" for f in files)


def test_the_separators_benchmark_compares_both_formats_parsed(smollm2_model_dir):
    # Two captions through the real metadata resource on SmolLM2: the compact documents are
    # shorter in tokens, and both are compared by value, not by the spaces the grammar forced.
    from benchmarks.separators import measure
    from benchmarks.workload import EXAMPLES
    from resources.metadata_llm import MetadataLLMResource

    llm = MetadataLLMResource(model=smollm2_model_dir, device="cpu", dtype="float32", batch_size=2)
    row = measure(llm, [e.caption for e in EXAMPLES[:2]], [EXAMPLES[1].metadata.model_dump()])
    tokens = row["tokens_per_document"]
    assert row["valid_documents"] == {"compact": 2, "spaced": 2}
    assert tokens["compact"] < tokens["spaced"]
    assert 0 <= row["field_agreement"] <= 1 and row["documents_equal"] + len(row["differing"]) == 2
    assert set(row["quality_against_good_answers"]["spaced"]) == {"primary_category", "scene_type", "tags_f1",
                                                                  "object_names_f1"}
