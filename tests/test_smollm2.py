"""The metadata LLM on a real trained model: SmolLM2-135M-Instruct, read from its GGUF file."""

from __future__ import annotations

import pytest
import torch

from assets.llm_schemas import ClusterLabelOutput
from resources.backends import Chat, ModelLoadError
from resources.metadata_llm import MetadataLLMResource, gguf_checkpoint, load_chat_model
from resources.smollm2 import smollm2_gguf_path

CAPTIONS = ["a cat sleeping on a wooden table", "people walking on the beach at sunset"]


def test_a_gguf_checkpoint_is_named_by_its_file_or_a_folder_holding_one(tmp_path):
    shipped = smollm2_gguf_path()
    assert gguf_checkpoint(str(shipped)) == shipped
    assert gguf_checkpoint(str(shipped.parent)) == shipped
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="several GGUF files"):
        gguf_checkpoint(str(tmp_path))
    with pytest.raises(ModelLoadError, match="does not exist"):
        gguf_checkpoint(str(tmp_path / "missing.gguf"))
    (tmp_path / "config.json").write_text("{}")  # a saved model beside stray GGUF files loads as saved
    assert gguf_checkpoint(str(tmp_path)) is None
    assert gguf_checkpoint("microsoft/Phi-3.5-mini-instruct") is None


def test_the_gguf_loads_with_its_chatml_template_and_grouped_query_attention(smollm2_model_dir):
    # smollm2_model_dir was unpacked from the GGUF by load_chat_model (tests/smollm2.py); loading the
    # copy checks what the GGUF read gave: the tokenizer's template and stop token, the model's shape.
    loaded = load_chat_model(smollm2_model_dir, "cpu", torch.float32)
    config = loaded.model.config
    assert config.model_type == "llama" and config.num_key_value_heads < config.num_attention_heads
    assert loaded.tokenizer.eos_token == "<|im_end|>" and loaded.pad_token_id == loaded.tokenizer.eos_token_id
    rendered = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                    add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_smollm2_writes_schema_valid_cluster_labels(smollm2_model_dir):
    llm = MetadataLLMResource(model=smollm2_model_dir, batch_size=len(CAPTIONS))
    chats = [Chat(system="You name groups of photos.", user=f"Captions: {c}", shared="Captions: ") for c in CAPTIONS]
    out = llm.generate_json(chats, schema=ClusterLabelOutput, max_new_tokens=240)
    for generation in out:
        assert generation.finished
        ClusterLabelOutput.model_validate_json(generation.text)
