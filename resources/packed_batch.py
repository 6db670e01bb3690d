"""Ragged decode batches: each step's tokens from every row packed into one sequence, no padding.

A padded batch runs every padding slot through the linear layers like a real token. On a
CPU those layers are compute-bound once a call carries more than a few dozen tokens, so
padding (prompts of different lengths, jump-forward runs of different lengths) is paid in
full. Here the rows' new tokens are concatenated into a single sequence (a batch of one),
so the linear layers see only real tokens, and attention, the one per-row operation, is
done by ``packed_attention`` over

* the shared prompt prefix, stored once (batch of one) and read once per step for all rows,
* each row's own keys and values, in buffers allocated ahead and written in place (no copy
  of the whole cache per step, as concatenating caches does).

The model runs with ``packed_attention`` as its attention implementation; without a
``packed`` argument it is plain SDPA, so the model behaves as usual everywhere else.
Sliding windows are not applied: a row must stay shorter than the model's window
(Phi-3.5's is 262,144 tokens).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from resources.prefix_cache import SharedPrefix

ATTENTION = "pixelsift_packed"


class PackedRows:
    """The keys and values of a batch of rows after an optional shared prefix, and the layout of
    the current step. The model writes to it as its ``cache``; ``packed_attention`` reads it."""

    def __init__(self, model: PreTrainedModel, prefix: SharedPrefix | None, rows: int, capacity: int):
        config = model.config
        self.prefix = prefix
        self.prefix_length = len(prefix.token_ids) if prefix is not None else 0
        self._device = model.device
        kv_heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (rows, kv_heads, max(1, capacity), head_dim)
        # Zeros, not empty: unwritten slots are masked, but 0 * NaN garbage would still poison the sums.
        self.keys = [torch.zeros(shape, dtype=model.dtype, device=self._device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.lengths = [0] * rows  # tokens stored per row, after the prefix
        self.window = getattr(config, "sliding_window", None)

    def plan(self, counts: list[int]) -> torch.Tensor:
        """Lay out a step in which row r feeds ``counts[r]`` tokens (packed in row order; 0 for a
        finished row still in the buffers). Returns the 4-D mask ``packed_attention`` uses:
        (rows, 1, width, keys) over each row's own keys; the model passes a 4-D mask through as is."""
        width = max(counts)
        starts = list(self.lengths)
        ends = [s + c for s, c in zip(starts, counts)]
        span = max(ends)
        if self.window is not None and self.prefix_length + span > self.window:
            raise ValueError(f"a row of {self.prefix_length + span} tokens exceeds the sliding window of {self.window}")
        self._grow(span)
        row_of, slot_of, query_slot = [], [], []
        for r, (start, count) in enumerate(zip(starts, counts)):
            row_of += [r] * count
            slot_of += range(start, start + count)
            query_slot += range(r * width, r * width + count)
        to_device = lambda values: torch.tensor(values, dtype=torch.long, device=self._device)  # noqa: E731
        self.row_of, self.slot_of = to_device(row_of), to_device(slot_of)
        self.query_slot = to_device(query_slot)  # packed token -> its (row, position in block) flattened
        self.width, self.span = width, span
        self.lengths = ends
        # Query w of row r sits at slot starts[r] + w and sees its own slots up to that one.
        key = torch.arange(span, device=self._device)
        seen = to_device(starts)[:, None] + torch.arange(width, device=self._device)[None]
        return (key[None, None, :] <= seen[:, :, None])[:, None]

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Store the step's new keys and values (packed: (1, kv_heads, tokens, head_dim)) in place."""
        self.keys[layer_idx][self.row_of, :, self.slot_of] = key[0].transpose(0, 1)
        self.values[layer_idx][self.row_of, :, self.slot_of] = value[0].transpose(0, 1)
        return key, value

    def select(self, keep: list[int]) -> None:
        """Keep only these rows, in this order (finished rows leave the batch); capacity is kept."""
        index = torch.tensor(keep, dtype=torch.long, device=self._device)
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.lengths = [self.lengths[i] for i in keep]

    def _grow(self, span: int) -> None:
        capacity = self.keys[0].shape[2]
        if span <= capacity:
            return
        new = max(span, capacity * 3 // 2)  # geometric: a row's buffers are copied O(log length) times
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                grown = old.new_zeros((*old.shape[:2], new, old.shape[3]))
                grown[:, :, :capacity] = old
                buffers[i] = grown


def packed_attention(module, query, key, value, attention_mask, scaling=None, packed: PackedRows | None = None, **kwargs):
    """Attention for a packed step (see the module docstring); plain SDPA when ``packed`` is None."""
    if packed is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    layer = module.layer_idx
    heads, tokens, head_dim = query.shape[1:]
    rows, width, span = len(packed.lengths), packed.width, packed.span
    scaling = head_dim**-0.5 if scaling is None else scaling
    groups = heads // packed.keys[layer].shape[1]

    # Queries into the (rows, heads, width, head_dim) layout; unused slots stay zero and are dropped below.
    padded = query.new_zeros(rows * width, heads, head_dim)
    padded[packed.query_slot] = query[0].transpose(0, 1)
    q = padded.view(rows, width, heads, head_dim).transpose(1, 2)

    own_k = packed.keys[layer][:, :, :span].repeat_interleave(groups, dim=1)
    own_v = packed.values[layer][:, :, :span].repeat_interleave(groups, dim=1)
    scores = [torch.matmul(q, own_k.transpose(-1, -2)).masked_fill_(~attention_mask, float("-inf"))]
    if packed.prefix is not None:
        # One GEMM for all rows against the single copy of the prefix: (heads, rows*width, prefix).
        prefix_k = packed.prefix.keys[layer][0].repeat_interleave(groups, dim=0)
        flat_q = q.transpose(0, 1).reshape(heads, rows * width, head_dim)
        prefix_scores = torch.matmul(flat_q, prefix_k.transpose(-1, -2))
        scores.insert(0, prefix_scores.view(heads, rows, width, -1).transpose(0, 1))
    weights = (torch.cat(scores, dim=-1).float() * scaling).softmax(dim=-1).to(query.dtype)

    out = torch.matmul(weights[..., packed.prefix_length :], own_v)
    if packed.prefix is not None:
        prefix_v = packed.prefix.values[layer][0].repeat_interleave(groups, dim=0)
        prefix_w = weights[..., : packed.prefix_length].transpose(0, 1).reshape(heads, rows * width, -1)
        out += torch.matmul(prefix_w, prefix_v).view(heads, rows, width, head_dim).transpose(0, 1)
    # Back to the packed order, as (1, tokens, heads, head_dim) like every attention implementation returns.
    out = out.transpose(1, 2).reshape(rows * width, heads, head_dim)[packed.query_slot]
    return out[None], None


AttentionInterface.register(ATTENTION, packed_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # ordinary calls get SDPA's masks


def use_packed_attention(model: PreTrainedModel) -> None:
    """Route the model's attention through ``packed_attention`` (idempotent)."""
    if model.config._attn_implementation != ATTENTION:
        model.set_attn_implementation(ATTENTION)
