"""MetadataLLMResource on a tiny random-weight Phi-3 loaded from disk through the real loading code."""

from __future__ import annotations

import json

import pytest

from assets.llm_schemas import ClusterLabelOutput, ImageMetadataOutput
from resources import torch_runtime
from resources.backends import Chat
from resources.metadata_llm import MetadataLLMResource, prompt_ids
from resources.tiny.phi3 import build_tiny_phi3

SYSTEM = "You write metadata for photos."
INSTRUCTION = "Describe the photo from its caption as JSON."
CAPTIONS = [
    "a cat sleeping on a wooden table",
    "people walking on the beach at sunset",
    "a bowl of soup",
    "a mountain covered in snow with pine trees in front",
]
BUDGET = 1024  # the tiny model's documents here take about 130-350 tokens


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(build_tiny_phi3(tmp_path_factory.mktemp("phi3")))


def chat(caption: str) -> Chat:
    return Chat(system=SYSTEM, user=f"{INSTRUCTION}\n\n{caption}", shared=f"{INSTRUCTION}\n\n")


def generate(llm: MetadataLLMResource, schema=ImageMetadataOutput, inputs=CAPTIONS, budget=BUDGET):
    """As the assets call it: in chunks of the resource's ``items_per_call``."""
    step = llm.items_per_call
    return [g for start in range(0, len(inputs), step)
            for g in llm.generate_json([chat(c) for c in inputs[start : start + step]], schema=schema,
                                       max_new_tokens=budget)]


@pytest.fixture(scope="module")
def metadata(model_dir):
    llm = MetadataLLMResource(model=model_dir, dtype="float32", batch_size=len(CAPTIONS))  # one call: last_stats covers all
    return llm, generate(llm)


def test_model_id_is_the_local_directory_or_the_hub_id(model_dir, metadata):
    llm, _ = metadata
    assert llm.model_id == model_dir
    assert MetadataLLMResource().model_id == "microsoft/Phi-3.5-mini-instruct"


@pytest.mark.parametrize("schema", [ImageMetadataOutput, ClusterLabelOutput])
def test_every_output_is_a_valid_document_of_the_schema(model_dir, metadata, schema):
    llm, out = metadata
    if schema is ClusterLabelOutput:
        out = generate(llm, schema)
    assert len(out) == len(CAPTIONS)
    for generation in out:
        assert generation.finished and generation.new_tokens > 0 and generation.ms > 0
        schema.model_validate_json(generation.text)
    stats = llm.last_stats
    assert stats.forward_calls > 0 and stats.jump_forward_tokens > 0
    assert stats.decode_tokens + stats.jump_forward_tokens == sum(g.new_tokens for g in out)


def test_a_tiny_budget_returns_unfinished_text_for_the_caller_to_handle(model_dir):
    out = generate(MetadataLLMResource(model=model_dir, dtype="float32"), ClusterLabelOutput, budget=4)
    for generation in out:
        assert not generation.finished and generation.new_tokens == 4
        with pytest.raises(json.JSONDecodeError):
            json.loads(generation.text)


def test_the_decoding_switches_reach_the_decoder(model_dir):
    # That the fast paths compute what the naive loop does is tested once, in test_parity.py, against
    # an independent loop; here only that the resource's settings turn them on and off.
    plain = MetadataLLMResource(model=model_dir, dtype="float32", batch_size=3, prefix_cache=False, jump_forward=False)
    fast = MetadataLLMResource(model=model_dir, dtype="float32", batch_size=3)
    inputs = CAPTIONS[:3]
    generate(plain, ClusterLabelOutput, inputs, budget=24)
    generate(fast, ClusterLabelOutput, inputs, budget=24)
    assert plain.last_stats.prefix_hits == 0 and plain.last_stats.jump_forward_tokens == 0
    assert fast.last_stats.prefix_hits == 1 and fast.last_stats.jump_forward_tokens > 0
    assert fast.last_stats.prefill_tokens < plain.last_stats.prefill_tokens / 2


def test_prompt_split_renders_exactly_the_chat_template(metadata):
    llm, _ = metadata
    tokenizer = llm._load().tokenizer
    prefix, prompts = prompt_ids(tokenizer, [chat(c) for c in CAPTIONS])
    for caption, ids in zip(CAPTIONS, prompts):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": INSTRUCTION + "\n\n" + caption}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
        assert rendered.startswith("<|system|>\n" + SYSTEM + "<|end|>\n<|user|>\n") and rendered.endswith("<|assistant|>\n")
        assert ids[: len(prefix) - 2] == prefix[:-2]


def test_no_inputs_no_work(model_dir):
    assert generate(MetadataLLMResource(model=model_dir), inputs=[]) == []


def test_a_missing_local_directory_is_an_error(tmp_path):
    for missing in (str(tmp_path / "no-such-model"), "./models/phi3"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            generate(MetadataLLMResource(model=missing))


def test_fingerprint_follows_what_changes_outputs(model_dir):
    base = MetadataLLMResource(model=model_dir, dtype="float32")
    assert base.fingerprint() == MetadataLLMResource(model=model_dir, dtype="float32", batch_size=2).fingerprint()
    assert base.fingerprint() == MetadataLLMResource(model=model_dir, dtype="float32", prefix_cache=False).fingerprint()
    for changed in (
        MetadataLLMResource(model=model_dir, dtype="bfloat16"),
        MetadataLLMResource(model=model_dir, dtype="int8"),
        MetadataLLMResource(model=model_dir, dtype="float32", jump_forward=False),
        MetadataLLMResource(model=model_dir + "-other", dtype="float32"),
    ):
        assert changed.fingerprint() != base.fingerprint()


def test_batch_size_0_is_the_fastest_measured_for_the_device(monkeypatch):
    # Memory sizes are the one thing faked: this machine has no GPU and one size of RAM.
    for ram, batch in ((64.0, 64), (18.0, 64), (16.0, 32), (11.0, 4)):
        monkeypatch.setattr(torch_runtime, "host_memory_gib", lambda ram=ram: ram)
        assert MetadataLLMResource(device="cpu", dtype="bfloat16").items_per_call == batch, ram
    for memory, batch in ((141.0, 512), (80.0, 512), (40.0, 256), (24.0, 128), (12.0, 64)):
        monkeypatch.setattr(torch_runtime, "gpu_memory_gib", lambda device, m=memory: m)
        assert MetadataLLMResource(device="cuda:1").items_per_call == batch, memory
    assert MetadataLLMResource(device="cpu", batch_size=3).items_per_call == 3


# Gemma's template refuses a system message; the second one renders nothing at all.
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{{ '<|user|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
BROKEN_TEMPLATE = "{{ raise_exception('this template renders nothing') }}"


def model_with_template(model_dir: str, tmp_path, template: str) -> str:
    import shutil

    from transformers import AutoTokenizer

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    tokenizer = AutoTokenizer.from_pretrained(copy)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(copy)
    return str(copy)


def test_a_template_without_a_system_role_gets_the_system_text_in_the_user_turn(model_dir, tmp_path):
    llm = MetadataLLMResource(model=model_with_template(model_dir, tmp_path, NO_SYSTEM_TEMPLATE), dtype="float32")
    out = llm.generate_json([chat(c) for c in CAPTIONS[:2]], schema=ClusterLabelOutput, max_new_tokens=BUDGET)
    for generation in out:
        ClusterLabelOutput.model_validate_json(generation.text)
    tokenizer = llm._load().tokenizer
    prefix, prompts = prompt_ids(tokenizer, [chat(CAPTIONS[0])])
    text = tokenizer.decode(prompts[0])
    assert text.startswith(f"<|user|>\n{SYSTEM}\n\n{INSTRUCTION}") and prompts[0][: len(prefix)] == prefix


def test_a_template_that_renders_nothing_fails_the_step_at_once(model_dir, tmp_path):
    from assets.structured_output import generate_structured
    from resources.metadata_llm import ChatTemplateError

    llm = MetadataLLMResource(model=model_with_template(model_dir, tmp_path, BROKEN_TEMPLATE), dtype="float32")
    with pytest.raises(ChatTemplateError, match="renders nothing"):
        generate_structured(llm, [chat(c) for c in CAPTIONS], schema=ClusterLabelOutput, budgets=[64],
                            fallback=lambda i: pytest.fail("no row may fall back: the step fails"))
