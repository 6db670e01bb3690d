"""Schema-valid structured output, whatever the model does: validate, retry once bigger, then fall back.

1. Generate every input with the first token budget (constrained decoding, so the text
   parses unless the budget ran out).
2. Inputs whose output does not validate are generated again, together, with the larger budget.
3. Inputs still invalid get the deterministic fallback, with the reason recorded.
A model call that raises is retried by ``run_in_chunks`` and, if it keeps failing, treated
like invalid output: the row falls back and says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

from pydantic import BaseModel, ValidationError

from assets.model_stage import describe_failure, run_in_chunks
from resources.backends import Generation, StructuredGenerator

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Structured(Generic[M]):
    value: M
    attempts: int  # generation attempts made (0 when the model failed before producing anything)
    json_valid: bool  # the model's own output validated (False: this is the fallback)
    fallback_reason: str | None
    ms: float  # model time spent on this input over all attempts
    new_tokens: int

    @property
    def fallback_used(self) -> bool:
        return self.fallback_reason is not None

    def row(self) -> dict:
        """The value's fields plus how it was produced, as stored in the asset's Parquet row."""
        return self.value.model_dump() | {
            "fallback_used": self.fallback_used, "fallback_reason": self.fallback_reason, "attempts": self.attempts,
            "json_valid": self.json_valid, "llm_ms": self.ms, "new_tokens": self.new_tokens, "reused": False,
        }


def parse(text: str, schema: type[M]) -> M | str:
    """The validated value, or a short reason why not."""
    try:
        return schema.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "output"
        return f"invalid JSON output at {where}: {first.get('msg', 'validation failed')}"


def generate_structured(
    llm: StructuredGenerator,
    *,
    system: str,
    instruction: str,
    inputs: Sequence[str],
    schema: type[M],
    budgets: Sequence[int],
    fallback: Callable[[int], M],
    chunk_size: int,
    retries: int = 1,
    logger: logging.Logger | None = None,
    on_valid: Callable[[list[tuple[int, Structured[M]]]], None] | None = None,
) -> list[Structured[M]]:
    """One validated ``schema`` instance per input; ``budgets`` are the token budgets per attempt.

    ``on_valid`` gets each chunk's newly validated results, by input index, as soon as they are
    known (to save progress); fallbacks are decided only at the end."""
    n = len(inputs)
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
            return llm.generate_json(system=system, instruction=instruction, inputs=[inputs[i] for i in indices],
                                     schema=schema, max_new_tokens=budget)

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
                    done[i] = Structured(parsed, attempts[i], True, None, ms[i], tokens[i])
                    valid.append((i, done[i]))
            if on_valid is not None and valid:
                on_valid(valid)

        run_in_chunks(pending, call, chunk_size=chunk_size, retries=retries, logger=logger, on_chunk=take)
        pending = still_pending
    for i in pending:
        done[i] = Structured(fallback(i), attempts[i], False, reasons[i], ms[i], tokens[i])
    return [done[i] for i in range(n)]
