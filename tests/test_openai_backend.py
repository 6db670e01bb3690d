"""The openai backend against HTTP servers on 127.0.0.1: request dialects, retries, and faults.

The server here is ``ScriptedServer`` (tests/model_server.py), our own tiny HTTP server, because
these faults (HTTP 503 on demand, a malformed body, an Ollama endpoint) cannot be produced by a
real model server on demand. The same backend against a real llama.cpp server with real weights
is tested in tests/test_model_server.py.
"""

import json
import time

import pytest
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from assets.llm_schemas import ImageMetadataOutput
from assets.prompts import metadata_chat
from assets.structured_output import generate_structured
from resources.backends import ModelLoadError
from resources.openai_backends import OpenAICaptionerResource, OpenAIStructuredResource
from resources.openai_dialects import unsupported_constructs
from tests.model_server import ScriptedServer, chat_answer, free_port

GOOD = json.dumps({"primary_category": "animals", "tags": ["cat", "sofa", "pet", "indoor", "sleeping"],
                   "detected_objects": [{"name": "cat", "confidence": 0.9}], "scene_type": "indoor",
                   "suggested_cluster_name": "Cats Indoors"})


def fallback(_: int) -> ImageMetadataOutput:
    return ImageMetadataOutput.model_validate_json(GOOD.replace("animals", "objects"))


def llm(server: ScriptedServer, **settings) -> OpenAIStructuredResource:
    return OpenAIStructuredResource(base_urls=[server.base_url], backoff_s=0.01, **settings)


def test_openai_dialect_sends_the_schema_and_validates_the_answer():
    with ScriptedServer([(200, chat_answer(GOOD))]) as server:
        backend = llm(server)
        out = generate_structured(backend, [metadata_chat("a cat asleep on a sofa")] * 3,
                                  schema=ImageMetadataOutput, budgets=[64], fallback=fallback)
    assert [s.json_valid for s in out] == [True] * 3 and out[0].value.primary_category == "animals"
    sent = server.requests[0]
    assert sent["model"] == "scripted" and sent["temperature"] == 0 and sent["max_tokens"] == 64
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == ImageMetadataOutput.model_json_schema()
    assert sent["messages"] == metadata_chat("a cat asleep on a sofa").messages()
    assert backend.model_id == "scripted"


def test_llama_cpp_and_ollama_dialects_are_detected():
    with ScriptedServer([(200, chat_answer(GOOD))], owned_by="llamacpp") as server:
        generate_structured(llm(server), [metadata_chat("a cat")], schema=ImageMetadataOutput, budgets=[64],
                            fallback=fallback)
    sent = server.requests[0]["response_format"]
    assert sent["type"] == "json_object" and sent["schema"]["properties"] == ImageMetadataOutput.model_json_schema()[
        "properties"]
    # llama.cpp's grammar ignores a number's bounds: the confidence goes as the values it may take.
    confidence = sent["schema"]["$defs"]["DetectedObject"]["properties"]["confidence"]
    assert confidence["enum"][:3] == [0.0, 0.05, 0.1] and confidence["enum"][-1] == 1.0 and "type" not in confidence
    ollama_answer = json.dumps({"message": {"role": "assistant", "content": GOOD}, "done_reason": "stop",
                                "eval_count": 9})
    with ScriptedServer([(200, ollama_answer)], owned_by="library", ollama=True) as server:
        out = generate_structured(llm(server), [metadata_chat("a cat")], schema=ImageMetadataOutput,
                                  budgets=[64], fallback=fallback)
    assert out[0].json_valid and out[0].new_tokens == 9
    assert server.requests[0]["format"]["required"] == ImageMetadataOutput.model_json_schema()["required"]
    assert server.requests[0]["options"]["num_predict"] == 64


def test_busy_server_is_retried_with_backoff():
    with ScriptedServer([(503, '{"error": "busy"}'), (429, '{"error": "slow down"}'),
                         (200, chat_answer(GOOD))]) as server:
        out = generate_structured(llm(server, retries=2), [metadata_chat("a cat")], schema=ImageMetadataOutput,
                                  budgets=[64], fallback=fallback)
    assert out[0].json_valid and len(server.requests) == 3


def test_malformed_answers_fall_back_with_the_reason():
    # A body without choices, then content that is not JSON: neither is a valid document.
    with ScriptedServer([(200, '{"id": "x"}'), (200, chat_answer("not json at all"))]) as server:
        out = generate_structured(llm(server, retries=0), [metadata_chat("a cat")], schema=ImageMetadataOutput,
                                  budgets=[64, 128], fallback=fallback, retries=0)
    assert out[0].fallback_used and not out[0].json_valid
    assert "invalid JSON" in out[0].fallback_reason  # the second attempt's reason is the one kept
    with ScriptedServer([(200, '{"id": "x"}')]) as server:
        out = generate_structured(llm(server, retries=0), [metadata_chat("a cat")], schema=ImageMetadataOutput,
                                  budgets=[64], fallback=fallback, retries=0)
    assert out[0].fallback_used and "malformed answer" in out[0].fallback_reason


def test_unreachable_server_fails_at_once():
    backend = OpenAIStructuredResource(base_urls=[f"http://127.0.0.1:{free_port()}/v1"], backoff_s=0.01)
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="not answering"):
        generate_structured(backend, [metadata_chat("a cat")] * 4, schema=ImageMetadataOutput, budgets=[64],
                            fallback=fallback)
    assert time.monotonic() - started < 5


def test_wrong_model_name_names_what_the_server_serves():
    with ScriptedServer([(200, chat_answer(GOOD))]) as server:
        with pytest.raises(ModelLoadError, match="does not serve model 'phi-4'.*'scripted'"):
            llm(server, model="phi-4").fingerprint()
    assert server.requests == []


class Lookahead(BaseModel):
    model_config = ConfigDict(regex_engine="python-re")  # pydantic's own engine refuses lookaround too
    word: str = Field(pattern=r"^(?!bad)[a-z]+$")


def test_schema_constructs_a_server_cannot_take_are_refused_before_any_request():
    with ScriptedServer([(200, chat_answer('{"word": "ok"}'))], owned_by="llamacpp") as server:
        with pytest.raises(ModelLoadError, match=r"llama_cpp dialect.*Lookahead.*\(\?!"):
            llm(server).generate_json([metadata_chat("a cat")], schema=Lookahead, max_new_tokens=8)
    assert server.requests == []
    assert unsupported_constructs({"type": "string", "pattern": "[a-z]+"}, "llama_cpp") == [
        "$.pattern /[a-z]+/ is not anchored with ^...$"]
    assert unsupported_constructs({"type": "string", "pattern": "[a-z]+"}, "json_schema") == []
    # The pipeline's own schemas pass every dialect.
    for dialect in ("json_schema", "llama_cpp", "ollama"):
        assert unsupported_constructs(ImageMetadataOutput.model_json_schema(), dialect) == []


def test_captions_send_the_reduced_image_as_a_data_url():
    with ScriptedServer([(200, chat_answer(" a red square "))]) as server:
        captioner = OpenAICaptionerResource(base_urls=[server.base_url], image_max_side=64)
        out = captioner.caption([Image.new("RGB", (640, 320), (200, 10, 10))] * 2, "")
    assert [c.text for c in out] == ["a red square"] * 2
    content = server.requests[0]["messages"][0]["content"]
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    import base64
    import io

    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (64, 32)
    assert content[1]["text"] == captioner.instruction


def test_fingerprint_follows_server_model_and_output_settings():
    with ScriptedServer([(200, chat_answer(GOOD))]) as server:
        a = llm(server).fingerprint()
        assert llm(server, concurrency=8, timeout_s=5).fingerprint() == a  # throughput settings: same output
        assert llm(server, dialect="llama_cpp").fingerprint() != a
    with ScriptedServer([(200, chat_answer(GOOD))], model="other") as server:
        assert llm(server).fingerprint() != a
