"""Greedy, grammar-constrained decoding over our own forward loop (not ``model.generate``).

Each row has its own xgrammar matcher; its token bitmask sets disallowed logits to -inf
before the argmax, so the output always matches the grammar unless the token budget
runs out. A complete document ends its row without a forward call for the stop token.
Three switches save work on top of the plain loop:

* batching: rows share forward calls. Each step packs every live row's pending tokens
  into one sequence, with each row's own positions; attention keeps rows apart
  (``resources/packed_batch.py``), so no slot is spent on padding in the linear layers
  and a row computes what it would alone (up to float rounding). Finished rows leave the
  batch and its cache.
* prefix caching: the prompt prefix shared by all inputs is prefilled once per model
  (``PrefixCache``) and its single copy is attended to by every row of every batch; only
  the per-input suffix is prefilled. Neither of these two changes a row's tokens.
* jump-forward: when the grammar forces a unique continuation (keys, punctuation), its
  tokens are accepted at once and fed with the row's sampled token (or its prompt) in
  the next step, instead of one forward call each. Packed steps cost only the tokens
  they carry, so rows with long and short forced runs share a step without padding.
  The forced tokens are our spelling of the forced text, not the model's own choice, so
  outputs can differ from the plain loop's.

With prefix caching and jump-forward off and a batch of one, this is the naive reference
loop: the whole prompt prefilled, then one token per forward call.

The loop decides what each row feeds and which token it takes; an ``Engine`` runs the model:
``TorchEngine`` here (packed steps over a transformers model), or llama.cpp's kernels
(``resources/llama_cpp_engine.py``). Both get the same rows, grammar and jump-forward policy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch
import xgrammar as xgr
from transformers import PreTrainedModel

from resources.json_grammar import SchemaGrammars
from resources.packed_batch import PackedRows, use_packed_attention
from resources.prefix_cache import PrefixCache, SharedPrefix

_FIRST_GROWTH = 128  # generated tokens the row buffers hold before they first grow


# Overrides a row's greedy choice: (input index, tokens generated so far, the row's grammar bitmask,
# int32 words with bit t set when token t is allowed) -> token id. The benchmark uses it to steer
# random-weight models to realistic documents; the masked argmax is still computed (its cost is
# real), and the chooser must pick a token the mask allows.
Chooser = Callable[[int, Sequence[int], torch.Tensor], int]

_BIT = torch.arange(32, dtype=torch.int32)


# One step's input for one row: (the row's slot in its batch, its tokens, the position of the first).
Feed = tuple[int, Sequence[int], int]


class RowBatch(Protocol):
    """The model state of one batch of rows, each continuing the shared prefix."""

    padding: int  # query slots the last step computed only to align rows (a statistic)

    def step(self, feeds: Sequence[Feed]) -> torch.Tensor:
        """Run the rows' new tokens (feeds in ascending slot order); return each fed row's
        next-token logits, one row of logits per feed, float, on the model's device."""

    def finish(self, slots: Sequence[int]) -> None:
        """These rows feed nothing more: their state may be freed."""


class Engine(Protocol):
    """What the decode loop needs from a model runtime."""

    def reserve(self, rows: int, prefix_tokens: int, longest_suffix: int, max_new_tokens: int) -> None:
        """Make room for a batch of ``rows`` before its prefix is looked up (may drop cached prefixes)."""

    def prefix(self, token_ids: tuple[int, ...]) -> tuple[object, bool]:
        """The shared prefix's state, and whether it had to be prefilled now (a miss)."""

    def rows(self, prefix: object | None, rows: int, longest_suffix: int, max_new_tokens: int) -> RowBatch:
        """A batch of ``rows`` empty rows after ``prefix`` (None: no shared prefix), each first feeding
        at most ``longest_suffix`` prompt tokens."""


class TorchEngine:
    """A transformers model: packed steps (``resources/packed_batch.py``), prefixes in a ``PrefixCache``."""

    def __init__(self, model: PreTrainedModel, prefix_cache: PrefixCache | None = None):
        use_packed_attention(model)
        self.model = model
        self.cache = prefix_cache if prefix_cache is not None else PrefixCache()

    def reserve(self, rows: int, prefix_tokens: int, longest_suffix: int, max_new_tokens: int) -> None:
        pass  # buffers are allocated per batch and grow as rows do

    def prefix(self, token_ids: tuple[int, ...]) -> tuple[SharedPrefix, bool]:
        return self.cache.get(self.model, token_ids)

    def rows(self, prefix: SharedPrefix | None, rows: int, longest_suffix: int, max_new_tokens: int) -> _TorchRows:
        return _TorchRows(self.model, prefix, rows, capacity=longest_suffix + min(max_new_tokens, _FIRST_GROWTH))


class _TorchRows:
    def __init__(self, model: PreTrainedModel, prefix: SharedPrefix | None, rows: int, capacity: int):
        self.model = model
        self.state = PackedRows(model, prefix, rows, capacity)
        self.order = list(range(rows))  # the buffers' row order; finished rows stay until compaction
        self.done: set[int] = set()
        self.padding = 0

    def step(self, feeds: Sequence[Feed]) -> torch.Tensor:
        device = self.model.device
        fed = {slot: len(tokens) for slot, tokens, _ in feeds}
        counts = [fed.get(slot, 0) for slot in self.order]  # finished rows feed nothing
        ids = [t for _, tokens, _ in feeds for t in tokens]
        positions = [p for _, tokens, first in feeds for p in range(first, first + len(tokens))]
        mask = self.state.plan(counts)
        ends = torch.tensor([c for c in counts if c], device=device).cumsum(0)
        out = self.model(
            input_ids=torch.tensor([ids], device=device),
            attention_mask=mask,
            position_ids=torch.tensor([positions], device=device),
            cache=self.state,
            use_cache=True,
            logits_to_keep=ends - 1,  # each fed row's last token: its next-token logits
            packed=self.state,
        )
        self.padding = len(self.order) * max(counts) - sum(counts)
        return out.logits[0]

    def finish(self, slots: Sequence[int]) -> None:
        self.done.update(slots)
        alive = [slot for slot in self.order if slot not in self.done]
        # Compacting copies every row's cache, so it waits until half the rows have finished.
        if alive and 2 * len(alive) <= len(self.order):
            self.state.select([j for j, slot in enumerate(self.order) if slot not in self.done])
            self.order = alive


@dataclass
class DecodeStats:
    """Where decoding spent its work; counts are tokens, times are wall seconds."""

    forward_calls: int = 0
    prefill_tokens: int = 0  # prompt tokens run through the model (a cached prefix counts once, when prefilled)
    padding_tokens: int = 0  # query slots attention computes only to align rows (the linear layers see none)
    decode_tokens: int = 0  # generated tokens chosen by argmax
    jump_forward_tokens: int = 0  # generated tokens forced by the grammar, never sampled
    prefix_hits: int = 0  # batches that reused a cached prefix
    grammar_seconds: float = 0.0  # host work: filling masks, accepting tokens, jump-forward
    model_seconds: float = 0.0  # forward calls, and the masked argmax (on a GPU it runs there)


@dataclass(frozen=True)
class Decoded:
    token_ids: list[int]  # generated tokens, stop token excluded
    text: str
    finished: bool  # the text is a complete document of the grammar
    seconds: float  # this row's share of its batch's wall time


@dataclass
class _Row:
    index: int  # position of the row's prompt in the caller's input
    slot: int  # position of the row in its batch (the engine's name for it)
    matcher: xgr.GrammarMatcher
    pending: list[int]  # chosen tokens not yet run through the model
    next_position: int
    generated: list[int] = field(default_factory=list)
    done: bool = False


def generate_constrained(
    model: PreTrainedModel,
    grammars: SchemaGrammars,
    grammar: xgr.CompiledGrammar,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    pad_token_id: int | None = None,
    prefix_ids: Sequence[int] = (),
    prefix_cache: PrefixCache | None = None,
    jump_forward: bool = False,
    choose: Chooser | None = None,
) -> tuple[list[Decoded], DecodeStats]:
    """``decode_constrained`` on a transformers model; the prefix is cached in ``prefix_cache``
    (None: no prefix caching). ``pad_token_id`` is accepted for callers of padded batching and
    not needed: steps are packed."""
    return decode_constrained(
        TorchEngine(model, prefix_cache), grammars, grammar, prompts, max_new_tokens=max_new_tokens,
        batch_size=batch_size, prefix_ids=prefix_ids, reuse_prefix=prefix_cache is not None,
        jump_forward=jump_forward, choose=choose,
    )


def decode_constrained(
    engine: Engine,
    grammars: SchemaGrammars,
    grammar: xgr.CompiledGrammar,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    prefix_ids: Sequence[int] = (),
    reuse_prefix: bool = True,
    jump_forward: bool = False,
    choose: Chooser | None = None,
) -> tuple[list[Decoded], DecodeStats]:
    """One grammar-constrained greedy decode per prompt (token ids of the full prompt).

    ``prefix_ids`` is the tokenised shared part of the prompts; with ``reuse_prefix`` the
    longest token prefix that it shares with every prompt is prefilled once and reused.
    (Tokenisers may merge across the prefix/suffix boundary, so that can be a few tokens
    shorter than ``prefix_ids``.) ``choose`` replaces greedy argmax (see ``Chooser``).
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    stats = DecodeStats()
    results: list[Decoded | None] = [None] * len(prompts)
    if not prompts:
        return [], stats
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    shared = _shared_length(prefix_ids, prompts) if reuse_prefix else 0

    # Similar lengths in a batch mean less padding; results go back in input order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        began = time.perf_counter()
        engine.reserve(len(batch), shared, max(len(prompts[i]) for i in batch) - shared, max_new_tokens)
        prefix = None
        if shared:
            t = time.perf_counter()
            prefix, missed = engine.prefix(tuple(prompts[batch[0]][:shared]))
            if missed:
                stats.forward_calls += 1
                stats.prefill_tokens += shared
                stats.model_seconds += time.perf_counter() - t
            else:
                stats.prefix_hits += 1
        rows = _decode_batch(
            engine,
            grammars,
            grammar,
            batch,
            [prompts[i] for i in batch],
            prefix=prefix,
            start=shared if prefix is not None else 0,
            max_new_tokens=max_new_tokens,
            jump_forward=jump_forward,
            choose=choose,
            stats=stats,
        )
        share = (time.perf_counter() - began) / len(batch)
        for i, row in zip(batch, rows):
            complete = row.matcher.is_terminated() or row.matcher.is_completed()
            results[i] = Decoded(row.generated, grammars.text(row.generated), complete, share)
    return results, stats


def _shared_length(prefix_ids: Sequence[int], prompts: Sequence[Sequence[int]]) -> int:
    """Tokens of ``prefix_ids`` that start every prompt, leaving each prompt at least one token."""
    shared = min(len(prefix_ids), *(len(p) - 1 for p in prompts))
    for prompt in prompts:
        while shared and list(prompt[:shared]) != list(prefix_ids[:shared]):
            shared -= 1
    return shared


def _decode_batch(
    engine: Engine,
    grammars: SchemaGrammars,
    grammar: xgr.CompiledGrammar,
    indices: list[int],
    prompts: list[Sequence[int]],
    *,
    prefix: object | None,
    start: int,
    max_new_tokens: int,
    jump_forward: bool,
    choose: Chooser | None,
    stats: DecodeStats,
) -> list[_Row]:
    rows = [
        _Row(i, slot, xgr.GrammarMatcher(grammar), list(p[start:]), next_position=start)
        for slot, (i, p) in enumerate(zip(indices, prompts))
    ]
    if jump_forward:
        t = time.perf_counter()
        for row in rows:
            _jump_forward(row, grammars, max_new_tokens, stats)  # e.g. '{"primary_category": "'
            row.done = len(row.generated) >= max_new_tokens
        stats.grammar_seconds += time.perf_counter() - t
    live = [row for row in rows if not row.done]  # rows still decoding, in slot order
    if not live:
        return rows
    stats.prefill_tokens += sum(len(p) - start for p, row in zip(prompts, rows) if not row.done)
    state = engine.rows(prefix, len(rows), max(len(row.pending) for row in live), max_new_tokens)
    state.finish([row.slot for row in rows if row.done])
    bitmask = xgr.allocate_token_bitmask(len(live), grammars.vocab_size)
    filler = xgr.BatchGrammarMatcher()  # fills the rows' masks on several threads where there are cores

    while live:
        t = time.perf_counter()
        logits = state.step([_feed(row) for row in live])
        launched = time.perf_counter() - t
        stats.forward_calls += 1
        stats.padding_tokens += state.padding

        # On a GPU the forward call may still be running: the masks are filled on the CPU meanwhile.
        t = time.perf_counter()
        masks = bitmask[: len(live)]
        filler.batch_fill_next_token_bitmask([row.matcher for row in live], masks)
        stats.grammar_seconds += time.perf_counter() - t
        t = time.perf_counter()
        greedy = _masked_argmax(logits, masks, grammars.vocab_size)
        stats.model_seconds += launched + time.perf_counter() - t

        _accept(live, greedy, masks, grammars, max_new_tokens, jump_forward, choose, stats)

        finished = [row.slot for row in live if row.done]
        live = [row for row in live if not row.done]
        if finished:
            state.finish(finished)
    return rows


def _feed(row: _Row) -> Feed:
    """The row's pending tokens, to be run now; its positions advance past them."""
    feed = (row.slot, row.pending, row.next_position)
    row.next_position += len(row.pending)
    row.pending = []
    return feed


def _masked_argmax(logits: torch.Tensor, masks: torch.Tensor, vocab_size: int) -> list[int]:
    """Each row's best token that its grammar mask allows. On a GPU the mask goes there (a few KB
    per row) instead of the logits coming back (128 KB per row), and only the token ids return."""
    if logits.device.type == "cpu":
        logits = logits.float()
        xgr.apply_token_bitmask_inplace(logits, masks, vocab_size=vocab_size)
        return logits.argmax(dim=-1).tolist()
    allowed = allowed_tokens(masks.to(logits.device, non_blocking=True), logits.shape[-1], vocab_size)
    return logits.float().masked_fill_(~allowed, float("-inf")).argmax(dim=-1).tolist()


def allowed_tokens(words: torch.Tensor, width: int, vocab_size: int) -> torch.Tensor:
    """Unpack xgrammar bitmask rows (int32 words, bit t of the row = token t allowed) into a
    (rows, width) boolean tensor on the words' device; ids at or past ``vocab_size`` are never allowed."""
    bits = ((words[:, :, None] >> _BIT.to(words.device)) & 1).bool().view(len(words), -1)
    allowed = torch.zeros((len(words), width), dtype=torch.bool, device=words.device)
    usable = min(width, vocab_size, bits.shape[1])
    allowed[:, :usable] = bits[:, :usable]
    return allowed


def _accept(
    live: list[_Row],
    greedy: list[int],
    masks: torch.Tensor,
    grammars: SchemaGrammars,
    max_new_tokens: int,
    jump_forward: bool,
    choose: Chooser | None,
    stats: DecodeStats,
) -> None:
    """Accept each live row's token (greedy, or the chooser's), then any forced run after it."""
    chosen = greedy if choose is None else [choose(row.index, row.generated, masks[j]) for j, row in enumerate(live)]
    t = time.perf_counter()
    for j, (row, token_id) in enumerate(zip(live, chosen)):
        if not row.matcher.accept_token(token_id):
            raise RuntimeError(f"the grammar rejected its own masked choice {token_id}; no token was allowed")
        if token_id in grammars.stop_token_ids:
            row.done = True
            continue
        row.generated.append(token_id)
        row.pending.append(token_id)
        stats.decode_tokens += 1
        if jump_forward:
            _jump_forward(row, grammars, max_new_tokens, stats)
        if row.matcher.is_completed():
            # A complete document needs no forward call just to pick the stop token.
            row.matcher.fill_next_token_bitmask(masks, j)
            if grammars.only_stop_allowed(masks[j]):
                row.matcher.accept_token(min(grammars.stop_token_ids))
                row.done = True
        if len(row.generated) >= max_new_tokens:
            row.done = True
    stats.grammar_seconds += time.perf_counter() - t


def _jump_forward(row: _Row, grammars: SchemaGrammars, max_new_tokens: int, stats: DecodeStats) -> None:
    forced = grammars.accept_forced(row.matcher, limit=max_new_tokens - len(row.generated))
    row.generated += forced
    row.pending += forced
    stats.jump_forward_tokens += len(forced)
