"""BLIP-2 image captioning with transformers (``Salesforce/blip2-opt-2.7b`` by default).

Like transformers' pipelines, a call is preprocess (images + prompt -> tensors), forward
(greedy ``generate``), postprocess (token ids -> ``Caption``). The prompt comes from the caller
(``assets/prompts.py``). torch and transformers are imported when the model is first used, not
with the module: the code location loads this resource without running it (resources/torch_runtime.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

from dagster import ConfigurableResource
from PIL import Image
from pydantic import Field

from resources import memory_budget, precision
from resources.backends import Caption, fingerprint
from resources.model_names import model_identity
from resources.settings import env_default
from resources.torch_runtime import device_type, large_model_device, load_once, local_model_dir, resolve_device

if TYPE_CHECKING:
    import torch
    from transformers import BatchFeature, Blip2ForConditionalGeneration, Blip2Processor

# Peak RSS of BLIP-2 OPT-2.7B (3.74B parameters) captioning on a CPU (BENCHMARKS.md, "Peak memory by
# precision"): bf16 at 16 and 32 images measured (8.5, 9.0 GiB: benchmarks/results/full-cpu.json), the
# rest derived as for the metadata LLM (resources/metadata_llm.py).
CPU_MEMORY = memory_budget.MemoryModel(
    "BLIP-2 OPT-2.7B", 3.74,
    weights_gib={"bfloat16": 6.97, "float16": 6.97, "float32": 13.93, "int8": 7.22},
    per_row_gib={"bfloat16": 0.031, "float16": 0.031, "float32": 0.062, "int8": 0.062},
    overhead_gib=1.0, load_gib={"int8": 7.4}, batches=(1, 2, 4, 8, 16, 32),  # 32: the largest measured
)
# GPU memory by batch size on an H200, bf16 (benchmarks/results/full-cuda.json).
GPU_PEAK_GIB = {64: 8.2, 128: 9.4, 256: 11.7}


def _model_source(model: str) -> str:
    path = local_model_dir(
        model, "give a directory saved with save_pretrained (model + processor) or a hub id such as "
        "'Salesforce/blip2-opt-2.7b'"
    )
    return str(path) if path else model


def _load(source: str, device: str, chosen: str) -> tuple[Blip2ForConditionalGeneration, Blip2Processor]:
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    processor = Blip2Processor.from_pretrained(source)
    model = Blip2ForConditionalGeneration.from_pretrained(source, dtype=precision.load_dtype(chosen),
                                                          use_safetensors=True)
    # The OPT decoder's lm_head stays float32: it picks every token.
    return precision.apply_precision(model.to(device).eval(), chosen, keep=("lm_head",), source=source), processor


def _generated_lengths(new_ids: torch.Tensor, eos_ids: set[int]) -> list[int]:
    """Tokens generated per row, up to and including the first EOS (later ones are padding)."""
    lengths = []
    for row in new_ids.tolist():
        end = next((i for i, token in enumerate(row) if token in eos_ids), None)
        lengths.append(len(row) if end is None else end + 1)
    return lengths


class CaptionerResource(ConfigurableResource):
    """Greedy BLIP-2 captions; the model loads once per process on first use."""

    model: str = Field(
        default_factory=lambda: env_default("CAPTIONER_MODEL", "Salesforce/blip2-opt-2.7b"),
        description="Hub id, or a local directory holding the model and its processor (PIXELSIFT_CAPTIONER_MODEL).",
    )
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: str = Field(default="auto", description=precision.help_text())
    batch_size: int = Field(
        default=0, ge=0, description=memory_budget.batch_help("Images per generate call", CPU_MEMORY, GPU_PEAK_GIB),
    )
    max_new_tokens: int = Field(default=20, ge=1, description="Caption length limit in tokens.")
    min_new_tokens: int = Field(
        default=0, ge=0, description="Suppress EOS until this many tokens (fixed-length runs for benchmarks)."
    )

    @property
    def model_id(self) -> str:
        return self.model

    @property
    def items_per_call(self) -> int:
        device, chosen = self._resolved()
        return memory_budget.step_batch(self.batch_size, device, chosen, self._memory(), GPU_PEAK_GIB)

    def _memory(self) -> memory_budget.MemoryModel:
        return memory_budget.for_checkpoint(CPU_MEMORY, self.model)

    def _resolved(self) -> tuple[str, str]:
        device = resolve_device(self.device)
        chosen = precision.resolve_precision(self.dtype, device, "captioner")
        if self.dtype == "auto" and device == "cpu":  # int8 where the first choice would not fit
            chosen = memory_budget.fitting_precision(chosen, self._memory())
        return device, chosen

    def fingerprint(self) -> str:
        # Batch size is left out: rows are independent (same prompt, no padding).
        device, dtype = self._resolved()
        return fingerprint(
            kind="blip2-caption",
            model=model_identity(self.model),  # a local model by its files' hashes, not its path
            device=device_type(device),
            dtype=precision.fingerprint_value(dtype),
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens,
        )

    def _loaded(self) -> tuple[Blip2ForConditionalGeneration, Blip2Processor]:
        device, dtype = self._resolved()
        device = large_model_device(self.device)  # on a machine with several GPUs, a free one
        source = _model_source(self.model)
        return load_once(("blip2", source, device, dtype), lambda: _load(source, device, dtype), large=True)

    def caption(self, images: Sequence[Image.Image], prompt: str) -> list[Caption]:
        if not images:
            return []
        model, processor = self._loaded()
        started = time.perf_counter()
        inputs = self.preprocess(model, processor, images, prompt)
        new_ids = self._forward(model, inputs)
        return self.postprocess(model, processor, new_ids, ms=(time.perf_counter() - started) * 1000 / len(images))

    @staticmethod
    def preprocess(model: Blip2ForConditionalGeneration, processor: Blip2Processor, images: Sequence[Image.Image],
                   prompt: str) -> BatchFeature:
        # Every row gets the same prompt, so the rows are the same length and need no padding.
        inputs = processor(
            images=[image.convert("RGB") for image in images], text=[prompt] * len(images), return_tensors="pt",
        ).to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)  # float32 for int8 too
        return inputs

    def _forward(self, model: Blip2ForConditionalGeneration, inputs: BatchFeature) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            output = model.generate(
                **inputs,
                do_sample=False,
                num_beams=1,
                max_new_tokens=self.max_new_tokens,
                min_new_tokens=self.min_new_tokens,
            )
        # Decoder-only generate returns prompt + continuation; keep the continuation.
        return output[:, inputs["input_ids"].shape[1] :].cpu()

    @staticmethod
    def postprocess(model: Blip2ForConditionalGeneration, processor: Blip2Processor, new_ids: torch.Tensor,
                    ms: float) -> list[Caption]:
        eos = model.generation_config.eos_token_id
        lengths = _generated_lengths(new_ids, set(eos) if isinstance(eos, list) else {eos})
        texts = processor.batch_decode(new_ids, skip_special_tokens=True)
        return [Caption(text=text.strip(), ms=ms, new_tokens=n) for text, n in zip(texts, lengths)]
