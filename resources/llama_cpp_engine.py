"""llama.cpp's CPU kernels behind the decode loop (``resources/constrained_decoding.py``).

A GGUF model runs through llama-cpp-python's low-level API: quantised matrix products (Q8_0,
Q4_K, ...) written for each CPU's vector units, which on CPUs without bf16 matrix units are
several times faster than float32 in torch (BENCHMARKS.md, "CPU classes"). Only the forward
pass is llama.cpp's: tokens, grammar masks, jump-forward and the greedy choice are the loop's,
the same as for a transformers model, so the two backends differ in arithmetic alone.

One context holds the batch: sequence 0 is the shared prompt prefix, prefilled once, and each
row is its own sequence that starts as a copy of it. The KV cache is unified, so that copy
shares the prefix's cells instead of duplicating them.
"""

from __future__ import annotations

import ctypes
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from resources.backends import ModelLoadError

if TYPE_CHECKING:
    import torch

    from resources.constrained_decoding import Feed

log = logging.getLogger(__name__)

_PREFIX_SEQ = 0  # the shared prefix's sequence; row r of a batch is sequence r + 1
_CELL_ROUNDING = 256  # llama.cpp pads the cache to this many cells anyway
_MAX_BATCH_TOKENS = 2048  # tokens per llama_decode call; a longer step is split
_UBATCH_TOKENS = 512  # tokens llama.cpp computes at once within a call (its default): bounds its buffers


class LlamaDecodeError(RuntimeError):
    """llama_decode failed: no room left in the KV cache, or an internal error."""


INSTALL_HINT = ("the llama_cpp backend needs llama-cpp-python: pip install -e '.[llama-cpp]' "
                "(it builds llama.cpp from source, a few minutes)")


def _llama():
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelLoadError(INSTALL_HINT) from exc
    return llama_cpp


_LOG_CALLBACK = None  # kept alive: llama.cpp holds the pointer
_GGML_LOG_LEVEL_WARN, _GGML_LOG_LEVEL_ERROR = 3, 4  # ggml.h's enum ggml_log_level


def _route_logs(llama_cpp) -> None:
    """llama.cpp's own log lines (thousands while loading) go to Python logging at debug level, its
    warnings at info level (with one cache for all rows it warns that a row may outgrow the model's
    window; the loop checks every prompt against it), its errors at warning level."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return

    def forward(level: int, text: bytes, _user) -> None:
        message = text.decode("utf-8", errors="replace").rstrip()
        if message:
            python_level = {_GGML_LOG_LEVEL_WARN: logging.INFO, _GGML_LOG_LEVEL_ERROR: logging.WARNING}
            log.log(python_level.get(level, logging.DEBUG), "llama.cpp: %s", message)

    _LOG_CALLBACK = llama_cpp.llama_log_callback(forward)
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


class LlamaCppEngine:
    """A loaded GGUF model and its context; the ``Engine`` of ``decode_constrained``."""

    # Rows share the prefix's cells, held once. Per-row caches (kv_unified off) hold a copy each and
    # were no faster: SmolLM2, 8 documents, 2 threads, 28.2 and 30.2 s unified, 32.6 and 42.2 s not.
    unified_cache = True

    _model = _ctx = _batch = None  # what close() frees, set as they are made

    def __init__(self, path: Path, threads: int):
        L = _llama()
        _route_logs(L)
        L.llama_backend_init()
        params = L.llama_model_default_params()
        # ggml's AMX kernels die on some machines that report AMX (virtual machines that do not grant
        # the tile registers, llama.cpp #20824): where the build has them, no extra weight buffers.
        # Elsewhere (AVX2, AVX-512) they are the repacked layouts that make its quantised kernels fast.
        params.use_extra_bufts = b"AMX_INT8 = 1" not in L.llama_print_system_info()
        self._model = L.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {path} (not a GGUF model it supports?)")
        self._L = L
        self.threads = threads
        vocab = L.llama_model_get_vocab(self._model)
        self.vocab_size = L.llama_vocab_n_tokens(vocab)
        self.context_window = L.llama_model_n_ctx_train(self._model)
        self.end_of_generation = frozenset(t for t in range(self.vocab_size) if L.llama_vocab_is_eog(vocab, t))
        layers, heads = L.llama_model_n_layer(self._model), L.llama_model_n_head(self._model)
        kv_width = L.llama_model_n_embd(self._model) // heads * L.llama_model_n_head_kv(self._model)
        self.cell_bytes = layers * 2 * kv_width * 2  # keys and values, float16, per token
        self._cells = 0
        self._sequences = 0
        self._prefix: tuple[int, ...] | None = None

    def close(self) -> None:
        self._free_context()
        if self._model:
            self._L.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except (TypeError, AttributeError):  # at interpreter exit llama_cpp may be gone: the OS frees it all
            pass

    # --- Engine ---

    def reserve(self, rows: int, prefix_tokens: int, longest_suffix: int, max_new_tokens: int) -> None:
        # A cached prefix keeps its cells until another replaces it, batches without it included.
        cells = max(prefix_tokens, len(self._prefix or ())) + rows * (longest_suffix + max_new_tokens)
        if self._ctx and cells <= self._cells and rows + 1 <= self._sequences:
            return
        cells = _CELL_ROUNDING * math.ceil(max(cells, self._cells) / _CELL_ROUNDING)
        self._new_context(cells, max(rows + 1, self._sequences))

    def prefix(self, token_ids: tuple[int, ...]) -> tuple[tuple[int, ...], bool]:
        if self._prefix == token_ids:
            return token_ids, False
        self._L.llama_memory_seq_rm(self._memory(), _PREFIX_SEQ, -1, -1)
        self._prefix = None
        self._decode([(_PREFIX_SEQ, token_ids, 0)], outputs=False)
        self._prefix = token_ids
        return token_ids, True

    def rows(self, prefix: tuple[int, ...] | None, rows: int, longest_suffix: int, max_new_tokens: int) -> _LlamaRows:
        memory = self._memory()
        for slot in range(rows):
            self._L.llama_memory_seq_rm(memory, slot + 1, -1, -1)  # left over by a batch that raised
            if prefix is not None:
                self._L.llama_memory_seq_cp(memory, _PREFIX_SEQ, slot + 1, -1, -1)
        return _LlamaRows(self)

    # --- internals ---

    def _new_context(self, cells: int, sequences: int) -> None:
        L = self._L
        self._free_context()
        params = L.llama_context_default_params()
        params.n_ctx = cells
        params.n_batch = min(_MAX_BATCH_TOKENS, cells)
        params.n_ubatch = min(_UBATCH_TOKENS, cells)
        params.n_seq_max = sequences
        params.kv_unified = self.unified_cache
        params.n_threads = params.n_threads_batch = self.threads
        params.no_perf = True
        self._ctx = L.llama_init_from_model(self._model, params)
        if not self._ctx:
            need = cells * self.cell_bytes / 2**30
            raise ModelLoadError(f"llama.cpp could not create a context of {cells} tokens ({need:.1f} GiB of "
                                 "key/value cache); lower the batch size")
        self._cells, self._sequences = cells, sequences
        self._batch_tokens = params.n_batch
        self._batch = L.llama_batch_init(self._batch_tokens, 0, 1)  # reused by every call of the context
        log.info("llama.cpp context: %d cells (%.2f GiB KV cache), %d sequences, %d threads",
                 cells, cells * self.cell_bytes / 2**30, sequences, self.threads)

    def _free_context(self) -> None:
        if self._batch is not None:
            self._L.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            self._L.llama_free(self._ctx)
            self._ctx, self._prefix = None, None

    def _memory(self):
        if not self._ctx:
            raise RuntimeError("reserve() a batch before using the llama.cpp engine")
        return self._L.llama_get_memory(self._ctx)

    def _decode(self, feeds: Sequence[Feed], *, outputs: bool = True) -> np.ndarray:
        """Run ``feeds`` ((sequence, tokens, first position) each) in calls of at most the context's
        batch size; with ``outputs``, return each feed's last-token logits, one row per feed."""
        L = self._L
        tokens = [(seq, token, first + j, outputs and j == len(ids) - 1)
                  for seq, ids, first in feeds for j, token in enumerate(ids)]
        logits = np.empty((len(feeds) if outputs else 0, self.vocab_size), dtype=np.float32)
        done = 0
        batch = self._batch
        for start in range(0, len(tokens), self._batch_tokens):
            chunk = tokens[start : start + self._batch_tokens]
            for k, (seq, token, position, wanted) in enumerate(chunk):
                batch.token[k], batch.pos[k] = token, position
                batch.n_seq_id[k], batch.seq_id[k][0] = 1, seq
                batch.logits[k] = wanted
            batch.n_tokens = len(chunk)
            code = L.llama_decode(self._ctx, batch)
            if code != 0:
                why = "no room in the KV cache" if code == 1 else f"llama_decode returned {code}"
                raise LlamaDecodeError(f"llama.cpp could not run {len(chunk)} tokens: {why}")
            wanted = sum(1 for *_, w in chunk if w)
            if wanted:
                block = np.ctypeslib.as_array(L.llama_get_logits(self._ctx), shape=(wanted, self.vocab_size))
                logits[done : done + wanted] = block
                done += wanted
        return logits


class _LlamaRows:
    """One batch's rows: sequences 1..n of the engine's context."""

    padding = 0  # rows are separate sequences: no slot is computed to align them

    def __init__(self, engine: LlamaCppEngine):
        self._engine = engine

    def step(self, feeds: Sequence[Feed]) -> torch.Tensor:
        import torch

        logits = self._engine._decode([(slot + 1, tokens, first) for slot, tokens, first in feeds])
        return torch.from_numpy(logits)

    def finish(self, slots: Sequence[int]) -> None:
        memory = self._engine._memory()
        for slot in slots:
            self._engine._L.llama_memory_seq_rm(memory, slot + 1, -1, -1)
