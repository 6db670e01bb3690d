"""Metadata-LLM steps under address-space limits, run as its own process by tests/test_memory_budget.py.

    python -m tests.memory_limited_step MODEL_DIR BUDGET_GIB:BATCH_SIZE:RUN [...]

For each phase, RLIMIT_AS is set to what the process already maps plus ``BUDGET_GIB`` (torch alone
maps ~3 GiB of address space it never touches), the resource chooses its rows per call from
``BATCH_SIZE`` (0 = its default) and, if ``RUN`` is 1, decodes that many rows. Past the limit an
allocation fails inside the process instead of the kernel killing it, so every outcome is
reported: one JSON line per phase. Phases share one process to pay the imports once.
"""

from __future__ import annotations

import json
import resource
import sys

import torch  # noqa: F401 - mapped before the limit is set

from assets.llm_schemas import ImageMetadataOutput
from assets.prompts import metadata_chat
from resources.memory_budget import MemoryBudgetError, _address_space_used, memory_room_gib
from resources.metadata_llm import MetadataLLMResource

START_RSS_GIB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # torch and the imports, before any limit


def phase(model_dir: str, budget_gib: float, batch_size: int, run: bool) -> dict:
    limit = _address_space_used() + int(budget_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    report = {"budget_gib": budget_gib, "batch_size": batch_size, "room_gib": round(memory_room_gib(), 2)}
    llm = MetadataLLMResource(model=model_dir, device="cpu", batch_size=batch_size)
    try:
        report["batch"] = llm.items_per_call
        if run:
            chats = [metadata_chat(f"photo {i}: a dog running on a beach") for i in range(report["batch"])]
            report["rows"] = len(llm.generate_json(chats, schema=ImageMetadataOutput, max_new_tokens=4))
        report["outcome"] = "ran" if run else "chosen"
    except MemoryBudgetError as exc:
        report |= {"outcome": "refused", "error": str(exc)}
    except MemoryError:
        report["outcome"] = "MemoryError"
    report["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    report["start_rss_gib"] = round(START_RSS_GIB, 2)
    return report


if __name__ == "__main__":
    for spec in sys.argv[2:]:
        budget, batch, run = spec.split(":")
        print(json.dumps(phase(sys.argv[1], float(budget), int(batch), run == "1")), flush=True)
