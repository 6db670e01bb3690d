"""The ``llama_cpp`` backend of the metadata LLM: the same model as a GGUF file, in this process,
on llama.cpp's CPU kernels.

On CPUs without bf16 matrix units (AVX2-only Intel Core and AMD Zen 2/3, many cloud VMs) the
transformers backend runs float32, several times slower than llama.cpp's quantised kernels
(BENCHMARKS.md, "CPU classes"). Everything but the forward pass is shared with the transformers
backend: the chat template and prompt tokens (``prompt_ids``), the xgrammar grammar, the decode
loop with its prefix cache and jump-forward (``resources/constrained_decoding.py``). The tokenizer
is read from the GGUF file itself, so the model is one file.

llama-cpp-python is an optional dependency (``pip install -e '.[llama-cpp]'``); it and the model
are loaded when the step first needs them, not when the definitions load.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from dagster import ConfigurableResource
from pydantic import BaseModel, Field, PrivateAttr

from resources import memory_budget, torch_runtime
from resources.backends import Chat, Generation, ModelLoadError, fingerprint
from resources.llama_cpp_engine import INSTALL_HINT
from resources.metadata_llm import check_context_window, gguf_checkpoint, postprocess, prompt_ids
from resources.model_names import model_identity
from resources.settings import env_default

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from resources.constrained_decoding import DecodeStats
    from resources.json_grammar import SchemaGrammars
    from resources.llama_cpp_engine import LlamaCppEngine

log = logging.getLogger(__name__)

DEFAULT_REPO = "bartowski/Phi-3.5-mini-instruct-GGUF"
DEFAULT_FILE = "Phi-3.5-mini-instruct-Q8_0.gguf"

# Peak RSS of a step writing metadata with Phi-3.5-mini (3.82B parameters): the GGUF file (Q8_0
# 3.8 GiB; Q4_K_M 2.2), and per row the float16 key/value cache llama.cpp allocates and clears up
# front (32 layers x 2 x 3072 x 2 bytes = 384 KiB a token) for its suffix and the retry's 768-token
# budget; the rest (torch and xgrammar for the masks, the tokenizer, llama.cpp's buffers) fitted to
# 9.75 GiB measured with Q4_K_M at 32 rows and a 384-token budget (BENCHMARKS.md, "CPU classes").
CPU_MEMORY = memory_budget.MemoryModel(
    "Phi-3.5-mini (GGUF Q8_0)", 3.82, weights_gib={"gguf": 3.78}, per_row_gib={"gguf": 0.3}, overhead_gib=2.8,
    batches=(1, 2, 4, 8, 16),  # 32 rows were 2% faster than 16 (6.12 against 6.23 s), for 2.4 GiB more
)


@dataclass
class GgufChat:
    """A loaded GGUF model: llama.cpp for the forward pass, the file's own tokenizer for the rest."""

    engine: LlamaCppEngine
    tokenizer: PreTrainedTokenizerBase
    grammars: SchemaGrammars


class LlamaCppLLMResource(ConfigurableResource):
    """Writes one JSON document per input with llama.cpp's kernels (greedy, grammar-constrained)."""

    runs_in_process: ClassVar[bool] = True  # the model is in this process: the step takes the large-model slot

    model: str = Field(
        default_factory=lambda: env_default("METADATA_LLM_MODEL", DEFAULT_REPO),
        description="A GGUF file, a directory holding one, or a Hugging Face hub repository of GGUF files "
        "(then `gguf_file` names the file) (PIXELSIFT_METADATA_LLM_MODEL).",
    )
    gguf_file: str = Field(default=DEFAULT_FILE, description="The file to download when `model` is a hub "
                           "repository. Q8_0 kept SmolLM2's documents as close to float32 as bf16 does; Q4_K_M, 1.26x "
                           "faster, moved them further (BENCHMARKS.md, 'CPU classes').")
    batch_size: int = Field(
        default=0, ge=0,
        description=f"Inputs decoded together; 0 = the largest of {', '.join(map(str, CPU_MEMORY.batches))} whose "
        f"estimated peak fits {memory_budget.HOST_MEMORY_SHARE:.0%} of RAM or the container limit (and RLIMIT_AS).",
    )
    threads: int = Field(default=0, ge=0, description="CPU threads; 0 = this step's share of the cores.")
    prefix_cache: bool = Field(default=True, description="Prefill the prompt part shared by all inputs once.")
    jump_forward: bool = Field(
        default=True, description="Feed text the schema forces (keys, punctuation) without sampling it token by token."
    )

    _last_stats: Any = PrivateAttr(default=None)

    @property
    def model_id(self) -> str:
        return self.model

    @property
    def items_per_call(self) -> int:
        return memory_budget.cpu_batch(self.batch_size, "gguf", self._memory())

    @property
    def last_stats(self) -> DecodeStats | None:
        return self._last_stats

    def _memory(self) -> memory_budget.MemoryModel:
        """The default model's figures; a local file's scaled by its parameters, its weights its size."""
        local = gguf_checkpoint(self.model)
        if local is None:
            return CPU_MEMORY
        scaled = memory_budget.for_checkpoint(CPU_MEMORY, str(local))
        return dataclasses.replace(scaled, weights_gib={"gguf": local.stat().st_size / 2**30})

    def fingerprint(self) -> str:
        local = gguf_checkpoint(self.model)
        return fingerprint(
            kind="metadata_llm",
            backend="llama_cpp",
            # A local file by its hash (its quantisation included); a hub file by name, not downloaded for this.
            model=model_identity(str(local)) if local else f"{self.model}/{self.gguf_file}",
            kernels=f"llama.cpp via llama-cpp-python {_llama_cpp_version()}",  # they decide the arithmetic
            decoding="greedy",
            jump_forward=self.jump_forward,
        )

    def generate_json(self, chats: Sequence[Chat], *, schema: type[BaseModel], max_new_tokens: int) -> list[Generation]:
        if not chats:
            return []
        from resources.constrained_decoding import decode_constrained

        loaded = self._load()
        prefix_ids, prompts = prompt_ids(loaded.tokenizer, chats)
        check_context_window(prompts, max_new_tokens, loaded.engine.context_window)
        decoded, stats = decode_constrained(
            loaded.engine, loaded.grammars, loaded.grammars.compile(schema), prompts,
            max_new_tokens=max_new_tokens, batch_size=len(prompts), prefix_ids=prefix_ids,
            reuse_prefix=self.prefix_cache, jump_forward=self.jump_forward,
        )
        self._last_stats = stats
        log.info("metadata LLM (llama.cpp): %d inputs, %s", len(prompts), stats)
        return postprocess(decoded)

    def _gguf_path(self) -> Path:
        local = gguf_checkpoint(self.model)
        if local is not None:
            return local
        if Path(self.model).expanduser().exists():
            raise ModelLoadError(f"{self.model!r} is neither a GGUF file nor a directory holding one")
        return _download(self.model, self.gguf_file)

    def _load(self) -> GgufChat:
        path = self._gguf_path()
        threads = self.threads or torch_runtime.threads_per_step()
        return torch_runtime.load_once(("llama_cpp", str(path), threads), lambda: load_gguf_chat(path, threads),
                                       large=True)


def load_gguf_chat(path: Path, threads: int) -> GgufChat:
    """The model on llama.cpp, its tokenizer and grammars (stop tokens: the model's end-of-generation ones)."""
    from resources.json_grammar import SchemaGrammars
    from resources.llama_cpp_engine import LlamaCppEngine
    from resources.metadata_llm import load_gguf_tokenizer

    engine = LlamaCppEngine(path, threads)
    tokenizer = load_gguf_tokenizer(path)
    stops = set(engine.end_of_generation) | ({tokenizer.eos_token_id} - {None})
    grammars = SchemaGrammars(tokenizer, engine.vocab_size, {t for t in stops if t < engine.vocab_size})
    return GgufChat(engine, tokenizer, grammars)


def _llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise ModelLoadError(INSTALL_HINT) from None


def _download(repo: str, filename: str) -> Path:
    """The hub file, from the local Hugging Face cache when it is there (no network needed then)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo or file: one clear message
        raise ModelLoadError(f"could not get {filename} from the hub repository {repo!r} ({type(exc).__name__}: "
                             f"{exc}); on a machine without the hub, set `model` to a local .gguf file") from exc
