"""Every prompt pixelsift sends to the LLM, in one place.

The field lists come from the pydantic models in ``assets/llm_schemas.py``, so a schema
change shows up in the prompt without editing this file. ``PROMPT_VERSION`` changes
whenever any text here or a schema changes; it is part of the reuse fingerprint, so editing a
prompt makes the next run recompute instead of reusing stale results.
"""

from __future__ import annotations

import hashlib
import json

from assets.llm_schemas import ClusterLabelOutput, ImageMetadataOutput, field_guide

SYSTEM = (
    "You are a careful photo librarian. You describe photos for a searchable catalogue. "
    "Answer with one JSON object and nothing else."
)

METADATA_INSTRUCTION = (
    "Below is a caption that describes one photo. From the caption alone, write the photo's catalogue entry "
    "as a JSON object with these fields:\n"
    f"{field_guide(ImageMetadataOutput)}\n"
    "Use only what the caption supports; prefer general, common words for tags."
)

CLUSTER_INSTRUCTION = (
    "Below are captions of photos that were grouped together because they look alike. "
    "Write the group's catalogue entry as a JSON object with these fields:\n"
    f"{field_guide(ClusterLabelOutput)}\n"
    "Name what the photos have in common, not any single photo."
)


def caption_input(caption: str) -> str:
    return f"Caption: {caption.strip()}"


def cluster_input(captions: list[str]) -> str:
    return "Captions:\n" + "\n".join(f"- {c.strip()}" for c in captions)


# The schemas are in it too: they are the grammar the output is constrained by.
PROMPT_VERSION = hashlib.sha256(
    "\x00".join([
        SYSTEM, METADATA_INSTRUCTION, CLUSTER_INSTRUCTION, caption_input("x"), cluster_input(["x"]),
        json.dumps(ImageMetadataOutput.model_json_schema(), sort_keys=True),
        json.dumps(ClusterLabelOutput.model_json_schema(), sort_keys=True),
    ]).encode()
).hexdigest()[:12]
