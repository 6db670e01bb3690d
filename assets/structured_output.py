"""Schema-valid structured output, whatever the model does: validate, retry once bigger, then fall back.

1. Generate every input with the first token budget (constrained decoding, so the text
   parses unless the budget ran out).
2. Inputs whose output does not validate are generated again, together, with the larger budget.
3. Inputs still invalid get the deterministic fallback, with the reason recorded.
A model call that raises is retried by ``run_in_chunks`` and, if it keeps failing, treated
like invalid output: the row falls back and says why.

``run_structured_stage`` is the whole step for an asset written by the LLM (image metadata,
cluster labels): reuse, progress, generation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Mapping, Sequence, TypeVar

from pydantic import BaseModel, ValidationError

from assets.model_stage import describe_failure, run_in_chunks
from assets.parquet_schemas import structured_output_columns
from assets.reuse import ModelStep
from resources.backends import Chat, Generation, StructuredGenerator

M = TypeVar("M", bound=BaseModel)
K = TypeVar("K", bound=Hashable)

# The columns that say how each value was produced, named once in the Parquet schemas.
PROVENANCE = [f.name for f in structured_output_columns("output")]


@dataclass(frozen=True)
class Structured(Generic[M]):
    value: M
    attempts: int  # generation attempts made (0 when the model failed before producing anything)
    json_valid: bool  # the model's own output validated (False: this is the fallback)
    fallback_reason: str | None
    llm_ms: float  # model time spent on this input over all attempts
    new_tokens: int
    duplicates_removed: int = 0  # repeated tags or objects the model wrote, dropped after validation

    @property
    def fallback_used(self) -> bool:
        return self.fallback_reason is not None

    def row(self) -> dict:
        """The value's fields plus how it was produced, as stored in the asset's Parquet row."""
        return self.value.model_dump() | {name: getattr(self, name) for name in PROVENANCE} | {"reused": False}


def stored_fields(row: dict, schema: type[BaseModel]) -> dict:
    """What ``Structured.row()`` wrote, read back from a stored row (for reuse)."""
    return {name: row.get(name) for name in [*schema.model_fields, *PROVENANCE]} | {"reused": True}


def parse(text: str, schema: type[M]) -> tuple[M, int] | str:
    """(the validated value without repeated list items, how many were removed), or a short reason why not.

    JSON-schema grammars cannot forbid repeats (xgrammar ignores ``uniqueItems``), so a tag or an
    object written twice is dropped here; a list left shorter than the schema allows is invalid.
    """
    removed = 0
    try:
        value = schema.model_validate_json(text)
        distinct, removed = deduplicated(value.model_dump())
        return (schema.model_validate(distinct) if removed else value), removed
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "output"
        after = f" after removing {removed} repeated items" if removed else ""
        return f"invalid JSON output at {where}{after}: {first.get('msg', 'validation failed')}"


def deduplicated(fields: dict) -> tuple[dict, int]:
    """``fields`` with every list's repeats dropped (the first kept): strings compared case-folded,
    objects by their ``name``; and how many were dropped."""
    removed = 0
    out = {}
    for key, value in fields.items():
        if isinstance(value, list):
            seen, kept = set(), []
            for item in value:
                ident = str(item.get("name") if isinstance(item, dict) else item).casefold().strip()
                if ident in seen:
                    removed += 1
                else:
                    seen.add(ident)
                    kept.append(item)
            value = kept
        out[key] = value
    return out, removed


def generate_structured(
    llm: StructuredGenerator,
    chats: Sequence[Chat],
    *,
    schema: type[M],
    budgets: Sequence[int],
    fallback: Callable[[int], M],
    retries: int = 1,
    logger: logging.Logger | None = None,
    on_valid: Callable[[list[tuple[int, Structured[M]]]], None] | None = None,
) -> list[Structured[M]]:
    """One validated ``schema`` instance per chat; ``budgets`` are the token budgets per attempt.

    ``on_valid`` gets each chunk's newly validated results, by input index, as soon as they are
    known (to save progress); fallbacks are decided only at the end."""
    n = len(chats)
    done: dict[int, Structured[M]] = {}
    reasons: dict[int, str] = {}
    ms = [0.0] * n
    tokens = [0] * n
    attempts = [0] * n
    pending = list(range(n))
    for budget in budgets:
        if not pending:
            break

        def call(indices: Sequence[int], budget: int = budget) -> list[Generation]:
            return llm.generate_json([chats[i] for i in indices], schema=schema, max_new_tokens=budget)

        still_pending: list[int] = []

        def take(chunk: Sequence[int], outcomes: list[Generation | Exception], budget: int = budget) -> None:
            valid = []
            for i, outcome in zip(chunk, outcomes):
                if isinstance(outcome, Exception):
                    reasons[i] = describe_failure(outcome)
                    still_pending.append(i)
                    continue
                attempts[i] += 1
                ms[i] += outcome.ms
                tokens[i] += outcome.new_tokens
                parsed = parse(outcome.text, schema)
                if isinstance(parsed, str):
                    cut_off = f"token budget of {budget} exhausted before the JSON ended"
                    reasons[i] = parsed if outcome.finished else cut_off
                    still_pending.append(i)
                else:
                    done[i] = Structured(parsed[0], attempts[i], True, None, ms[i], tokens[i], parsed[1])
                    valid.append((i, done[i]))
            if on_valid is not None and valid:
                on_valid(valid)

        run_in_chunks(pending, call, chunk_size=llm.items_per_call, retries=retries, logger=logger, on_chunk=take)
        pending = still_pending
    for i in pending:
        done[i] = Structured(fallback(i), attempts[i], False, reasons[i], ms[i], tokens[i])
    return [done[i] for i in range(n)]


def run_structured_stage(
    llm: StructuredGenerator,
    step: ModelStep,
    chats: Mapping[K, Chat],
    *,
    fingerprints: Mapping[K, str],
    key_column: str | None,
    schema: type[M],
    budgets: Sequence[int],
    fallback: Callable[[K], M],
    saved_row: Callable[[K, dict], dict],
    unusable: Mapping[K, str] | None = None,
) -> tuple[dict[K, dict], int]:
    """The LLM's fields for every item, reused where the warehouse has them; (fields, reused count).

    ``saved_row`` turns an item's fields into the row its finished chunk is saved as. Items in
    ``unusable`` (input the model cannot describe, with the reason) are not sent to the model:
    they get the fallback, with that reason recorded.
    """
    unusable = unusable or {}
    earlier, todo = step.split_reusable(fingerprints, key_column=key_column)
    fields = {item: stored_fields(row, schema) for item, row in earlier.items()}
    fields |= {item: Structured(fallback(item), 0, False, unusable[item], 0.0, 0).row() for item in todo
               if item in unusable}
    todo = [item for item in todo if item not in unusable]
    progress = step.progress(total=len(todo))
    structured = generate_structured(
        llm, [chats[item] for item in todo], schema=schema, budgets=budgets,
        fallback=lambda i: fallback(todo[i]), retries=step.settings.model_retries, logger=step.logger,
        on_valid=lambda valid: progress.save([saved_row(todo[i], s.row()) for i, s in valid]),
    )
    fields |= {item: s.row() for item, s in zip(todo, structured)}
    return fields, len(earlier)
