"""How each kind of model server wants schema-constrained output asked for, and what its grammar takes.

- ``json_schema``: OpenAI's ``response_format: {"type": "json_schema", ...}`` (vLLM, SGLang; xgrammar).
- ``llama_cpp``: ``response_format: {"type": "json_object", "schema": ...}`` (llama-cpp-python's server,
  llama.cpp's llama-server). llama-cpp-python answers OpenAI's form with HTTP 500, and when its
  converter cannot take a schema it silently constrains to *any* JSON instead: hence the check
  below, before the first request, rather than a fallback discovered per image.
- ``ollama``: Ollama's own ``/api/chat`` with the schema in ``format``.

llama.cpp's converters (llama-cpp-python, llama-server, Ollama) ignore ``minimum``/``maximum`` on
numbers: SmolLM2 wrote a confidence of 2 and every such row fell back. ``request_schema`` sends
them a bounded number as the 21 values from minimum to maximum in equal steps (0, 0.05, ..., 1 for
a confidence) instead, which their grammars do enforce; the answer is validated as before.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Iterator

DIALECTS = ("json_schema", "llama_cpp", "ollama")

# What /v1/models says in ``owned_by`` (the servers' own spelling) -> dialect.
_OWNED_BY = {"vllm": "json_schema", "sglang": "json_schema", "llamacpp": "llama_cpp", "me": "llama_cpp",
             "library": "ollama", "ollama": "ollama"}

# Regex constructs no server's grammar converter takes (lookaround, backreferences, lazy quantifiers).
_NOWHERE = [(re.compile(r"\(\?[=!<]"), "a lookaround group '(?=', '(?!' or '(?<'"),
            (re.compile(r"\\[1-9]"), "a backreference"),
            (re.compile(r"[*+?}]\?"), "a lazy quantifier")]
# llama.cpp's converters (llama-cpp-python, llama-server, Ollama) read only these string formats.
_LLAMA_FORMATS = {"date", "time", "date-time", "uuid"}


def dialect_of(owned_by: str, answers_ollama_api: bool) -> str:
    """The dialect of a server, from its /v1/models ``owned_by`` and whether it has Ollama's API;
    servers this does not recognise get OpenAI's form."""
    if answers_ollama_api:
        return "ollama"
    return _OWNED_BY.get(owned_by.lower(), "json_schema")


def _walk(node: Any, path: str = "$") -> Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def unsupported_constructs(schema: dict, dialect: str) -> list[str]:
    """Each place in ``schema`` that ``dialect``'s grammar converter rejects or would silently drop."""
    problems = []
    llama = dialect in ("llama_cpp", "ollama")
    for path, node in _walk(schema):
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            for regex, what in _NOWHERE:
                if regex.search(pattern):
                    problems.append(f"{path}.pattern /{pattern}/ uses {what}")
            if llama and not (pattern.startswith("^") and pattern.endswith("$")):
                problems.append(f"{path}.pattern /{pattern}/ is not anchored with ^...$")
        fmt = node.get("format")
        if llama and isinstance(fmt, str) and fmt not in _LLAMA_FORMATS:
            problems.append(f"{path}.format {fmt!r} (known: {', '.join(sorted(_LLAMA_FORMATS))})")
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#/"):
            problems.append(f"{path}.$ref {ref!r} is not local to the schema")
    return problems


NUMBER_STEPS = 20


def request_schema(schema: dict, dialect: str) -> dict:
    """The schema as sent to a ``dialect`` server: for llama.cpp's converters, bounded numbers as an enum."""
    if dialect not in ("llama_cpp", "ollama"):
        return schema
    sent = copy.deepcopy(schema)
    for _, node in _walk(sent):
        if node.get("type") == "number" and "minimum" in node and "maximum" in node:
            low, high = float(node.pop("minimum")), float(node.pop("maximum"))
            del node["type"]
            node["enum"] = sorted({round(low + (high - low) * i / NUMBER_STEPS, 6) for i in range(NUMBER_STEPS + 1)})
    return sent


def structured_request(dialect: str, model: str, messages: list[dict], schema: dict, name: str,
                       max_tokens: int) -> tuple[str, dict]:
    """(path, body) of a greedy, schema-constrained chat request in ``dialect``."""
    if dialect == "ollama":
        return "/api/chat", {"model": model, "messages": messages, "format": schema, "stream": False,
                             "options": {"temperature": 0, "seed": 0, "num_predict": max_tokens}}
    if dialect == "llama_cpp":
        response_format = {"type": "json_object", "schema": schema}
    else:
        response_format = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    return "/v1/chat/completions", {"model": model, "messages": messages, "response_format": response_format,
                                    "temperature": 0, "seed": 0, "max_tokens": max_tokens}


def image_request(dialect: str, model: str, instruction: str, image_b64_jpeg: str,
                  max_tokens: int) -> tuple[str, dict]:
    """(path, body) of a greedy chat request asking for a caption of one JPEG image."""
    if dialect == "ollama":
        message = {"role": "user", "content": instruction, "images": [image_b64_jpeg]}
        return "/api/chat", {"model": model, "messages": [message], "stream": False,
                             "options": {"temperature": 0, "seed": 0, "num_predict": max_tokens}}
    content = [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image_b64_jpeg}"}},
               {"type": "text", "text": instruction}]
    return "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": content}],
                                    "temperature": 0, "seed": 0, "max_tokens": max_tokens}


def answer_text(dialect: str, answer: dict) -> tuple[str, bool, int]:
    """(text, finished, new tokens) from an answer; ``KeyError``/``TypeError`` when it is malformed."""
    if dialect == "ollama":
        text = answer["message"]["content"]
        finished = answer.get("done_reason", "stop") != "length"
        tokens = int(answer.get("eval_count") or 0)
    else:
        choice = answer["choices"][0]
        text = choice["message"]["content"]
        finished = choice.get("finish_reason") != "length"
        tokens = int((answer.get("usage") or {}).get("completion_tokens") or 0)
    if not isinstance(text, str):
        raise TypeError(f"the answer's content is {type(text).__name__}, not text")
    return text, finished, tokens
