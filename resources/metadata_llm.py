"""The metadata LLM: a chat model writing schema-constrained JSON (Phi-3.5-mini by default).

Each prompt is the tokenizer's chat template over the ``Chat`` it is given (built in
``assets/prompts.py``). The template is rendered once more with a sentinel after the chat's
``shared`` part; the text before the sentinel is the prefix shared by every input, whose KV
cache is computed once per model and reused (see ``resources/constrained_decoding.py`` for the
decode loop and its switches). Like transformers' pipelines, a call is preprocess (chat ->
token ids), forward (constrained decoding), postprocess (token ids -> ``Generation``).

torch, transformers and the decoder modules are imported when the model is first used, not with
this module: the code location loads this resource without running it (resources/torch_runtime.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from dagster import ConfigurableResource
from jinja2 import TemplateError
from pydantic import BaseModel, Field, PrivateAttr

from resources import memory_budget, precision, torch_runtime
from resources.backends import Chat, Generation, ModelLoadError, fingerprint
from resources.model_names import model_identity
from resources.settings import env_default

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from resources.constrained_decoding import DecodeStats, Decoded
    from resources.json_grammar import SchemaGrammars
    from resources.prefix_cache import PrefixCache

log = logging.getLogger(__name__)

# Peak RSS of Phi-3.5-mini (3.82B parameters) writing metadata on a CPU (BENCHMARKS.md, "Peak memory
# by precision"). bf16 at 32 and 64 rows measured (11.1, 14.0 GiB: benchmarks/results/full-cpu.json),
# float32 at 16 rows measured on an AVX2 EPYC (18.0 GiB, issue 14); weights are parameters x bytes
# (int8: linear layers 2 bytes, their weights held twice, by output and by input channel
# (resources/int8_linear.py); embeddings and lm_head float32), a row's key/value cache and
# activations double in float32 and int8 (float32 activations), int8 loads bf16 before quantising.
CPU_MEMORY = memory_budget.MemoryModel(
    "Phi-3.5-mini", 3.82,
    weights_gib={"bfloat16": 7.12, "float16": 7.12, "float32": 14.23, "int8": 7.48},
    per_row_gib={"bfloat16": 0.09, "float16": 0.09, "float32": 0.18, "int8": 0.18},
    overhead_gib=1.1, load_gib={"int8": 7.6},
)
# GPU memory by batch size on an H200, bf16 (benchmarks/results/full-cuda.json).
GPU_PEAK_GIB = {128: 16.3, 256: 25.2, 512: 44.7}

_INPUT_SENTINEL = "\u2063PIXELSIFT_INPUT\u2063"


@dataclass
class ChatModel:
    """A loaded chat model with everything decoding needs, kept once per process."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    grammars: SchemaGrammars
    prefixes: PrefixCache
    pad_token_id: int


class MetadataLLMResource(ConfigurableResource):
    """Writes one JSON document per input, constrained by a pydantic schema (greedy decoding)."""

    model: str = Field(
        default_factory=lambda: env_default("METADATA_LLM_MODEL", "microsoft/Phi-3.5-mini-instruct"),
        description="Hugging Face hub id, a local directory holding a saved model and tokenizer, or a GGUF "
        "checkpoint (a .gguf file, or a directory holding one), unpacked to dense weights on load "
        "(PIXELSIFT_METADATA_LLM_MODEL).",
    )
    device: str = Field(default="auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1'...")
    dtype: str = Field(default="auto", description=precision.help_text())
    batch_size: int = Field(
        default=0, ge=0,
        description=memory_budget.batch_help("Inputs decoded together", CPU_MEMORY, GPU_PEAK_GIB),
    )
    prefix_cache: bool = Field(default=True, description="Prefill the prompt part shared by all inputs once.")
    jump_forward: bool = Field(
        default=True, description="Feed text the schema forces (keys, punctuation) without sampling it token by token."
    )

    _last_stats: Any = PrivateAttr(default=None)  # DecodeStats | None

    @property
    def model_id(self) -> str:
        return self.model

    @property
    def items_per_call(self) -> int:
        return memory_budget.step_batch(self.batch_size, torch_runtime.resolve_device(self.device), self.precision,
                                        self._memory(), GPU_PEAK_GIB)

    def _memory(self) -> memory_budget.MemoryModel:
        return memory_budget.for_checkpoint(CPU_MEMORY, self.model)

    @property
    def last_stats(self) -> DecodeStats | None:
        """Work counters and timings of the latest ``generate_json`` call (for benchmarks)."""
        return self._last_stats

    def fingerprint(self) -> str:
        device = torch_runtime.resolve_device(self.device)
        return fingerprint(
            kind="metadata_llm",
            model=model_identity(self.model_id),  # a local model by its files' hashes, not its path
            device=torch_runtime.device_type(device),
            dtype=precision.fingerprint_value(self.precision),  # int8 and bf16 change tokens
            decoding="greedy",
            jump_forward=self.jump_forward,  # forced text is spelled by us, not chosen by the model
        )

    def generate_json(self, chats: Sequence[Chat], *, schema: type[BaseModel], max_new_tokens: int) -> list[Generation]:
        if not chats:
            return []
        loaded = self._load()
        prefix_ids, prompts = self.preprocess(loaded, chats)
        check_context_window(prompts, max_new_tokens, getattr(loaded.model.config, "max_position_embeddings", None))
        decoded = self._forward(loaded, prefix_ids, prompts, schema, max_new_tokens)
        return postprocess(decoded)

    def preprocess(self, loaded: ChatModel, chats: Sequence[Chat]) -> tuple[list[int], list[list[int]]]:
        return prompt_ids(loaded.tokenizer, chats)

    def _forward(self, loaded: ChatModel, prefix_ids: list[int], prompts: list[list[int]], schema: type[BaseModel],
                 max_new_tokens: int) -> list[Decoded]:
        import torch

        from resources.constrained_decoding import generate_constrained

        with torch.inference_mode():
            decoded, stats = generate_constrained(
                loaded.model,
                loaded.grammars,
                loaded.grammars.compile(schema),
                prompts,
                max_new_tokens=max_new_tokens,
                batch_size=len(prompts),  # the caller's chunk is the batch (resources/backends.py)
                pad_token_id=loaded.pad_token_id,
                prefix_ids=prefix_ids,
                prefix_cache=loaded.prefixes if self.prefix_cache else None,
                jump_forward=self.jump_forward,
            )
        self._last_stats = stats
        log.info("metadata LLM: %d inputs, %s", len(prompts), stats)
        return decoded

    @property
    def precision(self) -> str:
        """What ``dtype`` means on this device and CPU class (``resources/precision.py``); 'auto' on a
        CPU takes int8 where its first choice would not fit in memory."""
        device = torch_runtime.resolve_device(self.device)
        chosen = precision.resolve_precision(self.dtype, device, "metadata_llm")
        if self.dtype == "auto" and device == "cpu":
            return memory_budget.fitting_precision(chosen, self._memory())
        return chosen

    def _load(self) -> ChatModel:
        device = torch_runtime.large_model_device(self.device)  # on a machine with several GPUs, a free one
        chosen = self.precision
        key = ("metadata_llm", self.model, device, chosen)
        return torch_runtime.load_once(key, lambda: load_chat_model(self.model, device, chosen), large=True)


def postprocess(decoded: Sequence[Decoded]) -> list[Generation]:
    return [Generation(d.text, d.seconds * 1000.0, len(d.token_ids), d.finished) for d in decoded]


def load_chat_model(model_ref: str, device: str, dtype: torch.dtype | str) -> ChatModel:
    """Load model and tokenizer from a hub id, a local directory (safetensors only, no remote code)
    or a GGUF file, in a torch dtype or a precision name (``resources/precision.py``).

    The one place a model is built. Int8 weight-only quantisation is not offered: on CPUs with
    AMX it is slower than bf16 at the batch sizes used. int8 weights and activations
    (``dtype='int8'``, resources/int8_linear.py) are.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from resources.json_grammar import SchemaGrammars
    from resources.prefix_cache import PrefixCache

    chosen = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    dtype = precision.load_dtype(chosen)
    gguf = gguf_checkpoint(model_ref)
    if gguf is not None:
        tokenizer, model = _load_gguf(gguf, dtype)
        source = str(gguf)
    else:
        source = _resolve_source(model_ref)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True)
    # lm_head stays float32: one layer of 32 in Phi-3.5, and it picks every token.
    model = precision.apply_precision(model.to(device).eval(), chosen, keep=("lm_head",), source=source)
    stop_ids = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)} - {None}
    grammars = SchemaGrammars(tokenizer, model.config.vocab_size, {t for t in stop_ids if t < model.config.vocab_size})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return ChatModel(model, tokenizer, grammars, PrefixCache(), pad)


def gguf_checkpoint(model_ref: str) -> Path | None:
    """The GGUF file ``model_ref`` names: a ``.gguf`` file, or a directory holding exactly one
    and no saved model (a directory with ``config.json`` loads as saved). None for anything else."""
    path = Path(model_ref).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {model_ref!r} does not exist")
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise ModelLoadError(f"{model_ref!r} holds several GGUF files ({names}); give the path of the one to load")
    return found[0] if found else None


def _load_gguf(gguf: Path, dtype: torch.dtype) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    # Unpacked to a plain dense model: the decoder's packed batches need the model's own attention
    # and linear layers, and transformers' packed-GGUF matmul kernels come from the Hub.
    from transformers import AutoModelForCausalLM, GgufConfig

    tokenizer = load_gguf_tokenizer(gguf)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype,
                                                 quantization_config=GgufConfig(dequantize=True))
    return tokenizer, model


def load_gguf_tokenizer(gguf: Path) -> PreTrainedTokenizerBase:
    """The tokenizer and chat template a GGUF file carries."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _resolve_source(model_ref: str) -> str:
    path = torch_runtime.local_model_dir(model_ref, "give a directory saved with save_pretrained or a hub id")
    return str(path) if path else model_ref


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, chats: Sequence[Chat]) -> tuple[list[int], list[list[int]]]:
    """Token ids of the prompt prefix the chats share and of each full prompt.

    Each full prompt is tokenised whole, so the model sees exactly the tokens of the
    rendered chat; the decoder reuses the prefix only as far as those tokens agree.
    """
    first = chats[0]
    marked = Chat(system=first.system, user=first.shared + _INPUT_SENTINEL, shared=first.shared)
    rendered = _render(tokenizer, marked)
    if rendered.count(_INPUT_SENTINEL) != 1:
        raise ValueError("the chat template must place the user message in the prompt exactly once")
    before = rendered.split(_INPUT_SENTINEL)[0]
    # The template already holds every special token the model expects (as apply_chat_template does).
    prefix_ids = tokenizer(before, add_special_tokens=False)["input_ids"]
    prompts = tokenizer([_render(tokenizer, chat) for chat in chats], add_special_tokens=False)["input_ids"]
    return prefix_ids, prompts


class PromptTooLong(ValueError):
    """A prompt and its token budget do not fit the model's context window (that input falls back)."""


def check_context_window(prompts: Sequence[Sequence[int]], max_new_tokens: int, window: int | None) -> None:
    """Raise before decoding when a prompt plus its budget would run past the ``window`` of positions
    the model knows (None: unknown, not checked)."""
    longest = max(len(p) for p in prompts)
    if window and longest + max_new_tokens > window:
        raise PromptTooLong(f"prompt of {longest} tokens + budget of {max_new_tokens} exceeds the model's "
                            f"context window of {window} tokens")


class ChatTemplateError(ModelLoadError):
    """The model's chat template renders no prompt at all: every row would fail, so the step does."""


def _render(tokenizer: PreTrainedTokenizerBase, chat: Chat) -> str:
    try:
        return _apply_template(tokenizer, chat.messages())
    except TemplateError as refused:
        # Templates without a system role (Gemma's) raise on one: its text opens the user turn instead.
        merged = [{"role": "user", "content": f"{chat.system}\n\n{chat.user}"}]
        try:
            return _apply_template(tokenizer, merged)
        except (TemplateError, ValueError) as exc:
            raise ChatTemplateError(f"the model's chat template renders no prompt: with a system message "
                                    f"{refused}; with it merged into the user message {exc}") from exc
    except ValueError as exc:  # transformers: the tokenizer has no chat template
        raise ChatTemplateError(f"the model's chat template renders no prompt: {exc}") from exc


def _apply_template(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
