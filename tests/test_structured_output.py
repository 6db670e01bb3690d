"""Validate / retry / fall back, driven by a scripted generator.

The scripted generator stands in for the LLM so each path (valid, cut off, invalid,
model crash) can be forced; the real tiny Phi-3 runs through this code in test_pipeline.py.
"""

import json
import re

import pytest
from pydantic import ValidationError

from assets.fallbacks import image_metadata_fallback
from assets.llm_schemas import MAX_PATTERN_REPEAT, MAX_SENTENCE_WORDS, ClusterLabelOutput, ImageMetadataOutput
from assets.structured_output import generate_structured, parse
from resources.backends import Chat, Generation

VALID = json.dumps({"primary_category": "food", "tags": ["coffee", "cup", "drink", "table", "morning"],
                    "detected_objects": [{"name": "cup", "confidence": 0.9}], "scene_type": "indoor",
                    "suggested_cluster_name": "Coffee Cups"})


class Scripted:
    """Returns, per input and attempt, the scripted text or raises the scripted exception."""

    items_per_call = 4
    model_id = "scripted"

    def __init__(self, script):
        self.script = script  # input -> list of outcomes by attempt
        self.calls = []

    def fingerprint(self):
        return "scripted"

    def generate_json(self, chats, *, schema, max_new_tokens):
        inputs = [c.user for c in chats]
        self.calls.append((inputs, max_new_tokens))
        out = []
        for text in inputs:
            outcome = self.script[text].pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            finished = not outcome.startswith("CUT:")
            out.append(Generation(text=outcome.removeprefix("CUT:"), ms=10.0, new_tokens=7, finished=finished))
        return out


def run(script, inputs, on_valid=None):
    llm = Scripted(script)
    results = generate_structured(llm, [Chat(system="s", user=text) for text in inputs], schema=ImageMetadataOutput,
                                  budgets=[100, 200], fallback=lambda k: image_metadata_fallback(inputs[k]),
                                  retries=1, on_valid=on_valid)
    return llm, results


def test_valid_first_time():
    llm, [r] = run({"a cup": [VALID]}, ["a cup"])
    assert r.json_valid and not r.fallback_used and r.attempts == 1 and r.value.primary_category == "food"
    assert llm.calls == [(["a cup"], 100)]


def test_cut_off_output_is_retried_with_the_larger_budget():
    llm, [r] = run({"a cup": ["CUT:" + VALID[:30], VALID]}, ["a cup"])
    assert r.json_valid and r.attempts == 2 and r.llm_ms == 20.0 and r.new_tokens == 14
    assert [budget for _, budget in llm.calls] == [100, 200]


def test_invalid_twice_falls_back_with_the_reason():
    bad = VALID.replace('"food"', '"spaceships"')
    _, [r] = run({"a dog on a beach": [bad, bad]}, ["a dog on a beach"])
    assert r.fallback_used and not r.json_valid and r.attempts == 2
    assert "primary_category" in r.fallback_reason
    assert r.value == image_metadata_fallback("a dog on a beach")
    assert r.value.primary_category == "animals"


def test_budget_exhausted_twice_says_so():
    _, [r] = run({"x": ["CUT:{", "CUT:{\"tags"]}, ["x"])
    assert r.fallback_used and r.fallback_reason == "token budget of 200 exhausted before the JSON ended"


def test_model_crash_is_retried_then_recorded_and_neighbours_survive():
    script = {"ok": [VALID] * 5, "crash": [RuntimeError("boom")] * 10}
    _, results = run(script, ["ok", "crash"])
    # The chunk failed, so items were retried alone: 'ok' still succeeded.
    assert results[0].json_valid
    assert results[1].fallback_used and results[1].attempts == 0
    assert results[1].fallback_reason.startswith("model failed: RuntimeError: boom")


def test_valid_results_are_handed_over_chunk_by_chunk_and_fallbacks_never():
    bad = VALID.replace('"food"', '"spaceships"')
    inputs = [f"in{i}" for i in range(6)]
    script = {t: [VALID] for t in inputs} | {"in1": ["CUT:{", VALID], "in5": [bad, bad]}
    seen = []
    _, results = run(script, inputs, on_valid=lambda valid: seen.append([(k, s.attempts) for k, s in valid]))
    # First round: chunks of 4 and 2 (in1 cut off, in5 invalid); second round: in1 valid, in5 falls back.
    assert seen == [[(0, 1), (2, 1), (3, 1)], [(4, 1)], [(1, 2)]]
    assert results[5].fallback_used


def test_parse_reports_where_it_failed():
    assert parse(VALID, ImageMetadataOutput)[0].scene_type == "indoor"
    assert parse("{", ImageMetadataOutput).startswith("invalid JSON output")
    assert "tags" in parse(VALID.replace('"morning"', '"Not Plain!"'), ImageMetadataOutput)


@pytest.mark.parametrize("caption", ["", "!!!", "a " * 300, "Ünïcödé café 東京", "a cat and a dog and a car"])
def test_fallbacks_always_validate(caption):
    from assets.fallbacks import cluster_label_fallback
    from assets.llm_schemas import ClusterLabelOutput

    ImageMetadataOutput.model_validate(image_metadata_fallback(caption).model_dump())
    ClusterLabelOutput.model_validate(cluster_label_fallback([caption, caption]).model_dump())


def _pattern_bounds(schema: dict) -> list[tuple[str, int]]:
    found = []
    for value in schema.get("properties", {}).values():
        found += [(value["pattern"], int(n)) for n in re.findall(r"\{\d*,?(\d+)\}", value.get("pattern", ""))]
    for sub in schema.get("$defs", {}).values():
        found += _pattern_bounds(sub)
    for value in schema.get("properties", {}).values():
        if "items" in value:
            found += _pattern_bounds({"properties": {"item": value["items"]}})
    return found


@pytest.mark.parametrize("schema", [ImageMetadataOutput, ClusterLabelOutput])
def test_every_pattern_repetition_stays_on_xgrammars_fast_path(schema):
    bounds = _pattern_bounds(schema.model_json_schema())
    assert bounds, "the schema's patterns were not found"
    assert [(p, n) for p, n in bounds if n > MAX_PATTERN_REPEAT] == []


def test_a_cluster_description_is_whole_words_ending_with_a_full_stop():
    ok = {"cluster_name": "Coffee Cups", "tags": ["cup", "coffee", "table"], "primary_category": "food"}
    ClusterLabelOutput.model_validate({**ok, "description": "Cups of café au lait, 2 on each table."})
    longest = " ".join(["word"] * MAX_SENTENCE_WORDS) + "."
    ClusterLabelOutput.model_validate({**ok, "description": longest})
    for bad in ["Cups of coffee", "Cups of coff.ee.", longest.replace(".", " word."), "Room 1234567 here."]:
        with pytest.raises(ValidationError):
            ClusterLabelOutput.model_validate({**ok, "description": bad})


@pytest.mark.parametrize("good", ["café", "piñata", "close-up", "children's toys", "year 1960", "sunset over the sea"])
def test_tags_take_accented_and_hyphenated_words_and_short_numbers(good):
    assert parse(VALID.replace('"morning"', json.dumps(good, ensure_ascii=False)), ImageMetadataOutput)[0].tags[-1] == good


@pytest.mark.parametrize("bad", ["animals321123456", "1000000000", "theoceanandtheskyandthesandandthewaves",
                                 "Cup", "cup  mug", "cup!", "a", "x y"])
def test_tags_refuse_digit_runs_glued_words_and_markup(bad):
    assert "tags" in parse(VALID.replace('"morning"', json.dumps(bad)), ImageMetadataOutput)


def test_cluster_names_have_room_for_four_long_words_without_gluing():
    name = "Snowy Mountain Landscapes Photographed"
    doc = json.loads(VALID) | {"suggested_cluster_name": name}
    assert parse(json.dumps(doc), ImageMetadataOutput)[0].suggested_cluster_name == name
    assert "suggested_cluster_name" in parse(json.dumps(doc | {"suggested_cluster_name": "Animals 321123456"}),
                                             ImageMetadataOutput)


def test_repeated_tags_and_objects_are_dropped_and_counted():
    doc = json.loads(VALID)
    doc["tags"] += ["coffee", "cup"]
    doc["detected_objects"] += [{"name": "cup", "confidence": 0.2}]
    value, removed = parse(json.dumps(doc), ImageMetadataOutput)
    assert removed == 3 and value.tags == ["coffee", "cup", "drink", "table", "morning"]
    assert [(o.name, o.confidence) for o in value.detected_objects] == [("cup", 0.9)]
    doc["tags"] = ["cat"] * 3  # repeats leave fewer than the two tags required
    assert "after removing" in parse(json.dumps(doc), ImageMetadataOutput)


def test_removed_repeats_are_recorded_in_the_row():
    doc = json.loads(VALID)
    doc["tags"].append("cup")
    _, [r] = run({"a cup": [json.dumps(doc)]}, ["a cup"])
    assert r.json_valid and r.duplicates_removed == 1 and r.row()["duplicates_removed"] == 1
