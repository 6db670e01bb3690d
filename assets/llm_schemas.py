"""What the metadata LLM writes, as pydantic models: the single source of truth.

The same classes give (1) the JSON schema that constrains decoding, (2) the field
list quoted in the prompt (``assets/prompts.py``) and (3) validation of the
output. Strings are limited to plain words so the model cannot emit control characters, markup,
digit runs or runaway text even when decoding is unconstrained.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Category = Literal["animals", "people", "vehicles", "nature", "food", "architecture", "objects", "abstract"]
SceneType = Literal["portrait", "landscape", "still_life", "action", "abstract", "indoor", "outdoor"]

CATEGORIES: tuple[str, ...] = get_args(Category)
SCENE_TYPES: tuple[str, ...] = get_args(SceneType)

# Words are letters (Latin-1 accented ones too: "café", "piñata"), at most one inner hyphen or
# apostrophe ("close-up", "children's"); a number is a word of its own, at most 4 digits ("1960",
# never "animals321123456"). Limits are generous so a good answer never runs into them: a model
# that hits a tight word or word-count limit glues words together ("theocean") instead of stopping.
_LOWER = "a-zß-öø-ÿ"
_LETTER = "A-Za-zÀ-ÖØ-öø-ÿ"
# Tags and names take words of two letters or more: a lone letter ("a", "b", ...) is not a tag.
_WORD = f"[{_LOWER}]{{2,24}}([-'][{_LOWER}]{{1,24}})?"
_ANY_CASE_WORD = f"[{_LETTER}]{{2,24}}([-'][{_LETTER}]{{1,24}})?"
_SENTENCE_WORD = f"[{_LETTER}]{{1,24}}([-'][{_LETTER}]{{1,24}})?"
_NUMBER = "[0-9]{1,4}"
# A tag or object name: one to four lower-case words, the first not a number.
# Lengths are bounded inside the patterns because xgrammar ignores maxLength next to a pattern.
Term = Annotated[str, StringConstraints(pattern=f"^{_WORD}( ({_WORD}|{_NUMBER})){{0,3}}$")]
# A cluster name: one to six words, any case (the prompt asks for two to four).
ClusterName = Annotated[str, StringConstraints(
    pattern=f"^{_ANY_CASE_WORD}( ({_ANY_CASE_WORD}|{_NUMBER})){{0,5}}$")]
# One plain sentence that ends with a full stop: words separated by a space or ", ", at most 40
# words, so it ends where the model ends it, never cut mid-word by a character limit.
# xgrammar unrolls a repetition bound up to 128 and falls off its fast path above it: with {0,199}
# a token mask took 2.1 ms instead of 7 us (BENCHMARKS.md); tests keep every bound at 128 or less.
MAX_PATTERN_REPEAT = 128
MAX_SENTENCE_WORDS = 40
Sentence = Annotated[str, StringConstraints(
    pattern=f"^{_SENTENCE_WORD}(,? ({_SENTENCE_WORD}|{_NUMBER})){{0,{MAX_SENTENCE_WORDS - 1}}}[.]$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectedObject(_Strict):
    name: Term = Field(description="what the object is, one to three lower-case words")
    confidence: float = Field(ge=0.0, le=1.0, description="how sure you are that it is in the photo, between 0 and 1")


# The option lists of the categorical fields are not in their descriptions: the grammar offers
# exactly these values when the model writes the field, and a small model copies option words it
# read in the field list into its tags and names (issue 10).
class ImageMetadataOutput(_Strict):
    """Structured metadata for one image, written by the LLM from the image's caption."""

    primary_category: Category = Field(description="the main subject's category")
    tags: list[Term] = Field(min_length=2, max_length=12,
                             description="2 to 12 different short lower-case tags, words the caption supports")
    detected_objects: list[DetectedObject] = Field(
        min_length=1, max_length=8, description="the things named in the caption, each once, with a confidence"
    )
    scene_type: SceneType = Field(description="the kind of scene")
    suggested_cluster_name: ClusterName = Field(description="a 2 to 4 word name for a group of similar images")


class ClusterLabelOutput(_Strict):
    """A name and description for one cluster, written from its representatives' captions."""

    cluster_name: ClusterName = Field(description="a 2 to 4 word name for the group")
    description: Sentence = Field(description="one plain sentence saying what the images have in common")
    tags: list[Term] = Field(min_length=2, max_length=10,
                             description="2 to 10 different short lower-case tags the captions support")
    primary_category: Category = Field(description="the group's main subject category")
