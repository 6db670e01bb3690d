"""What the metadata LLM writes, as pydantic models: the single source of truth.

The same classes give (1) the JSON schema that constrains decoding, (2) the field
list quoted in the prompt (``assets/prompts.py``) and (3) validation of the
output. Strings are limited to short plain words so the model cannot emit control
characters, markup or runaway text even when decoding is unconstrained.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Category = Literal["animals", "people", "vehicles", "nature", "food", "architecture", "objects", "abstract"]
SceneType = Literal["portrait", "landscape", "still_life", "action", "abstract", "indoor", "outdoor"]

CATEGORIES: tuple[str, ...] = get_args(Category)
SCENE_TYPES: tuple[str, ...] = get_args(SceneType)

# A tag or object name: one to three lower-case words.
# Lengths are bounded inside the patterns because xgrammar ignores maxLength next to a pattern.
Term = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9]{0,15}( [a-z0-9]{1,15}){0,2}$")]
# A cluster name: two to four words.
ClusterName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9]{0,15}( [A-Za-z0-9]{1,15}){1,3}$")]
# One plain sentence: printable characters without quotes, backslashes or newlines, at most 129.
# xgrammar unrolls a repetition bound up to 128 and falls off its fast path above it: with {0,199}
# a token mask took 2.1 ms instead of 7 us (BENCHMARKS.md); tests keep every bound at 128 or less.
MAX_PATTERN_REPEAT = 128
Sentence = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ,.;:'()-]{0,128}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectedObject(_Strict):
    name: Term = Field(description="what the object is, one to three lower-case words")
    confidence: float = Field(ge=0.0, le=1.0, description="how sure you are, between 0 and 1")


class ImageMetadataOutput(_Strict):
    """Structured metadata for one image, written by the LLM from the image's caption."""

    primary_category: Category = Field(description="one of: " + ", ".join(CATEGORIES))
    tags: list[Term] = Field(min_length=5, max_length=15, description="5 to 15 short lower-case tags")
    detected_objects: list[DetectedObject] = Field(
        min_length=1, max_length=8, description="1 to 8 objects visible in the image, each with a confidence"
    )
    scene_type: SceneType = Field(description="one of: " + ", ".join(SCENE_TYPES))
    suggested_cluster_name: ClusterName = Field(description="a 2 to 4 word name for a group of similar images")


class ClusterLabelOutput(_Strict):
    """A name and description for one cluster, written from its representatives' captions."""

    cluster_name: ClusterName = Field(description="a 2 to 4 word name for the group")
    description: Sentence = Field(description="one plain sentence saying what the images have in common")
    tags: list[Term] = Field(min_length=5, max_length=10, description="5 to 10 short lower-case tags")
    primary_category: Category = Field(description="one of: " + ", ".join(CATEGORIES))

