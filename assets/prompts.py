"""Every prompt a model sees, in one place: the caption prompt and the LLM's chats.

A backend sends exactly what is built here (``resources.backends.Chat``): nothing is added to
or joined onto a prompt anywhere else. The LLM's field lists come from the pydantic models in
``assets/llm_schemas.py``, so a schema change shows up in the prompt without editing this file.
``PROMPT_VERSION`` changes whenever any text here or a schema changes; it is part of the reuse
fingerprint, so editing a prompt makes the next run recompute instead of reusing stale results.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel

from assets.llm_schemas import ClusterLabelOutput, ImageMetadataOutput
from resources.backends import Chat
from resources.json_text import SEPARATORS

# The text BLIP-2's caption continues; empty means an unconditional caption.
CAPTION_PROMPT = ""

SYSTEM = (
    "You are a careful photo librarian. You describe photos for a searchable catalogue. "
    "Answer with one JSON object and nothing else."
)


def field_guide(model: type[BaseModel]) -> str:
    """The field list quoted in prompts, generated from the model so it cannot drift from the schema."""
    return "\n".join(f"- {name}: {field.description}" for name, field in model.model_fields.items())


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


def _chat(instruction: str, input_text: str) -> Chat:
    shared = instruction + "\n\n"
    return Chat(system=SYSTEM, user=shared + input_text, shared=shared)


def caption_input(caption: str) -> str:
    return f"Caption: {caption.strip()}"


def cluster_input(captions: list[str]) -> str:
    return "Captions:\n" + "\n".join(f"- {c.strip()}" for c in captions)


def metadata_chat(caption: str) -> Chat:
    """The chat that turns one image's caption into its metadata."""
    return _chat(METADATA_INSTRUCTION, caption_input(caption))


def cluster_chat(captions: list[str]) -> Chat:
    """The chat that names a cluster from its representatives' captions."""
    return _chat(CLUSTER_INSTRUCTION, cluster_input(captions))


# The schemas and separators are in it too: they are the grammar the output is constrained by.
# The spaced separators were the grammar's before they were named, so they add nothing and the
# results stored then are still reused.
PROMPT_VERSION = hashlib.sha256(
    "\x00".join([
        SYSTEM, METADATA_INSTRUCTION, CLUSTER_INSTRUCTION, caption_input("x"), cluster_input(["x"]),
        json.dumps(ImageMetadataOutput.model_json_schema(), sort_keys=True),
        json.dumps(ClusterLabelOutput.model_json_schema(), sort_keys=True),
        *([] if SEPARATORS == (", ", ": ") else [json.dumps(SEPARATORS)]),
    ]).encode()
).hexdigest()[:12]
