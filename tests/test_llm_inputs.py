"""Issue 10 item 6: input the LLM cannot describe never reaches it, and a prompt must fit the context."""

from __future__ import annotations

from dataclasses import replace

import pytest

from assets.caption_checks import unusable_caption
from assets.prompts import caption_input
from resources.backends import Chat
from resources.metadata_llm import MetadataLLMResource, PromptTooLong
from tests.test_pipeline import Counting, run_batch, spies, tiny_models  # noqa: F401 - the session fixture


@pytest.mark.parametrize("caption, reason", [
    ("", "empty caption"), ("   \n", "empty caption"), ("\ufffd\ufffd\ufffd a \ufffd\ufffd", "replacement characters"),
    ("123 456 ...", "no words"), ("a . 7", "no words"),
])
def test_captions_without_content_are_unusable(caption, reason):
    assert reason in unusable_caption(caption)


@pytest.mark.parametrize("caption", ["a cat on a table", "un café sur une table", "猫がテーブルで寝ている",
                                     "a cat \ufffd on a wooden table in the morning light"])
def test_captions_with_words_are_usable(caption):
    assert unusable_caption(caption) is None


class BrokenCaptions(Counting):
    """The real tiny captioner, with the first caption of each call emptied and the second garbled."""

    def caption(self, images, prompt):
        out = self.inner.caption(images, prompt)
        bad = ["", "\ufffd" * 12]
        return [replace(c, text=bad[i]) if i < len(bad) else c for i, c in enumerate(out)]


def test_an_unusable_caption_falls_back_without_a_model_call(tiny_models, images_root, tmp_path):
    models = spies(tiny_models)
    models["captioner"] = BrokenCaptions(tiny_models["captioner"])
    sent: list[str] = []
    llm = models["metadata_llm"]
    real = llm.generate_json
    llm.generate_json = lambda chats, **kw: sent.extend(c.user for c in chats) or real(chats, **kw)
    tables = run_batch(images_root, tmp_path / "warehouse", models)
    rows = [r for r in tables["image_metadata"].to_pylist() if r["status"] == "ok"]
    reasons = {r["description"]: r["fallback_reason"] for r in rows}
    assert reasons[""] == "empty caption" and "replacement characters" in reasons["\ufffd" * 12]
    assert all(not r["json_valid"] and r["attempts"] == 0 for r in rows if r["description"] in ("", "\ufffd" * 12))
    assert sent and not any(text.endswith(caption_input("")) or "\ufffd" * 12 in text for text in sent)  # nor cluster prompts


def test_a_prompt_longer_than_the_context_window_is_refused_before_decoding(smollm2_model_dir):
    llm = MetadataLLMResource(model=smollm2_model_dir)
    window = llm._load().model.config.max_position_embeddings
    long = Chat(system="s", user="word " * window)
    from assets.llm_schemas import ClusterLabelOutput

    with pytest.raises(PromptTooLong, match="context window"):
        llm.generate_json([long], schema=ClusterLabelOutput, max_new_tokens=16)
