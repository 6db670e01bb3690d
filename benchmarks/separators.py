"""Compact against spaced JSON separators, on SmolLM2's trained weights: tokens and agreement.

    python -m benchmarks.separators [--gguf Q8_0] [--model DIR]

The metadata resource as the pipeline runs it (chat template, prefix cache, xgrammar-constrained
greedy decoding of ``ImageMetadataOutput``, jump-forward, 384-token budget) writes the same
captions twice: with the grammar's separators (``resources/json_text.py``: ", " and ": ") and with
compact ones ("," and ":"). The documents are compared parsed, field by field, so
only what the model chose counts, not the spaces the grammar forced. Captions: the eight of
``benchmarks/precision.py`` and the workload's ten. For the workload's ten, whose good answers
``benchmarks/workload.py`` holds, each format is also scored against them with the evaluation's
own normalisation and matching (category and scene type equal, tag and object-name F1).
``--gguf`` runs the ``llama_cpp`` backend on that quantisation of the same weights instead of
transformers' float32.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from unittest import mock


def _parsed(texts: list[str]) -> list[dict | None]:
    out = []
    for text in texts:
        try:
            out.append(json.loads(text))
        except ValueError:
            out.append(None)
    return out


def quality(documents: list[dict | None], references: list[dict]) -> dict:
    """Mean per-field scores of ``documents`` against good answers (0 for an unparsed document)."""
    from evals.metrics import exact_prf
    from evals.normalize import normalize_terms

    def names(doc):
        return normalize_terms([o["name"] for o in doc["detected_objects"]])

    scores = {"primary_category": [], "scene_type": [], "tags_f1": [], "object_names_f1": []}
    for doc, ref in zip(documents, references):
        doc = doc or {"primary_category": None, "scene_type": None, "tags": [], "detected_objects": []}
        scores["primary_category"].append(float(doc["primary_category"] == ref["primary_category"]))
        scores["scene_type"].append(float(doc["scene_type"] == ref["scene_type"]))
        scores["tags_f1"].append(exact_prf(normalize_terms(doc["tags"]), normalize_terms(ref["tags"])).f1)
        scores["object_names_f1"].append(exact_prf(names(doc), names(ref)).f1)
    return {k: sum(v) / len(v) for k, v in scores.items()}


def measure(llm, captions: list[str], references: list[dict]) -> dict:
    """``references``: good answers for the last ``len(references)`` captions."""
    from assets.llm_schemas import ImageMetadataOutput
    from assets.prompts import metadata_chat
    from resources.json_text import COMPACT, SEPARATORS

    chats = [metadata_chat(c) for c in captions]
    runs = {}
    llm.generate_json(chats[:1], schema=ImageMetadataOutput, max_new_tokens=384)  # load and warm up
    for name, separators in (("compact", COMPACT), ("spaced", SEPARATORS)):
        with mock.patch("resources.json_grammar.SEPARATORS", separators):
            started = time.perf_counter()
            out = llm.generate_json(chats, schema=ImageMetadataOutput, max_new_tokens=384)
            runs[name] = {"seconds": time.perf_counter() - started, "texts": [g.text for g in out],
                          "tokens": sum(g.new_tokens for g in out)}
    compact, spaced = _parsed(runs["compact"]["texts"]), _parsed(runs["spaced"]["texts"])
    fields = same = 0
    for a, b in zip(spaced, compact):
        if a is not None:
            fields += len(a)
            same += sum(b is not None and b.get(k) == v for k, v in a.items())
    return {
        "captions": len(captions),
        "tokens_per_document": {k: r["tokens"] / len(captions) for k, r in runs.items()},
        "seconds_per_document": {k: r["seconds"] / len(captions) for k, r in runs.items()},
        "valid_documents": {k: sum(d is not None for d in docs) for k, docs in (("compact", compact), ("spaced", spaced))},
        "documents_equal": sum(a == b for a, b in zip(spaced, compact)),
        "field_agreement": same / max(fields, 1),
        "quality_against_good_answers": {k: quality(docs[-len(references):], references)
                                         for k, docs in (("compact", compact), ("spaced", spaced))},
        "differing": [{"caption": c, "spaced": s, "compact": k}
                      for c, s, k, a, b in zip(captions, runs["spaced"]["texts"], runs["compact"]["texts"], spaced, compact)
                      if a != b],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", help="the llama_cpp backend on this quantisation (Q4_1 = the shipped file, Q8_0, F16)")
    parser.add_argument("--model", help="transformers: a saved copy of SmolLM2 instead of unpacking the GGUF")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    os.environ.setdefault("PIXELSIFT_STEPS_AT_ONCE", "1")  # every core for the one measurement
    from benchmarks.precision import benchmark_captions, quantised_smollm2
    from benchmarks.workload import EXAMPLES

    captions = benchmark_captions()
    references = [e.metadata.model_dump() for e in EXAMPLES]
    if args.gguf:
        from resources.llama_cpp_llm import LlamaCppLLMResource

        llm = LlamaCppLLMResource(model=str(quantised_smollm2(args.gguf)), batch_size=len(captions))
    else:
        from resources.metadata_llm import MetadataLLMResource
        from resources.smollm2 import smollm2_gguf_path

        llm = MetadataLLMResource(model=args.model or str(smollm2_gguf_path()), device="cpu", dtype="float32",
                                  batch_size=len(captions))
    print(json.dumps({"backend": f"llama.cpp {args.gguf}" if args.gguf else "transformers float32",
                      **measure(llm, captions, references)}, indent=1))


if __name__ == "__main__":
    main()
