"""The schemas' grammars in xgrammar: compile time and token-mask time, this tree against a git revision.

    python -m benchmarks.grammar_patterns MODEL_DIR [--against HEAD~1]

MODEL_DIR holds a tokenizer (SmolLM2's saved copy: tests/smollm2.py). For each schema, compiles
its grammar (cache off, as ``resources/json_grammar.py`` does) and walks a hand-written valid
document token by token, timing the mask before each token. ``--against`` loads
``assets/llm_schemas.py`` as it was at that revision, to compare pattern designs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import xgrammar as xgr
from transformers import AutoTokenizer

from resources.json_text import SEPARATORS, json_text

DOCUMENTS = {
    "ImageMetadataOutput": {"primary_category": "animals", "tags": ["cat", "sleeping cat", "wooden table", "pet", "indoors"],
                            "detected_objects": [{"name": "cat", "confidence": 0.9}, {"name": "table", "confidence": 0.8}],
                            "scene_type": "indoor", "suggested_cluster_name": "Sleeping Cats"},
    "ClusterLabelOutput": {"cluster_name": "Beach Sunsets", "primary_category": "nature", "tags": ["beach", "sunset", "people", "sea", "sand"],
                           "description": "People walking on sandy beaches at sunset, with the sea behind them."},
}


def _schemas_module(label: str, source: Path):
    spec = importlib.util.spec_from_file_location(f"llm_schemas_{label}", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the annotations through it
    spec.loader.exec_module(module)
    return module


def measure(module, info: xgr.TokenizerInfo, tokenizer) -> dict[str, dict[str, float]]:
    out = {}
    for name, doc in DOCUMENTS.items():
        schema = getattr(module, name)
        text = json_text({k: doc[k] for k in schema.model_fields})
        schema.model_validate_json(text)
        start = time.perf_counter()
        grammar = xgr.GrammarCompiler(info, cache_enabled=False).compile_json_schema(
            json.dumps(schema.model_json_schema()), any_whitespace=False, separators=SEPARATORS)
        compile_s = time.perf_counter() - start
        matcher, mask = xgr.GrammarMatcher(grammar), xgr.allocate_token_bitmask(1, info.vocab_size)
        ids, spent = tokenizer(text, add_special_tokens=False)["input_ids"], 0.0
        for token in ids:
            start = time.perf_counter()
            matcher.fill_next_token_bitmask(mask)
            spent += time.perf_counter() - start
            if not matcher.accept_token(token):
                raise ValueError(f"{name}: the grammar refused {tokenizer.decode([token])!r} of {text}")
        out[name] = {"compile_ms": compile_s * 1000, "mask_us_per_token": spent / len(ids) * 1e6}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--against", help="a git revision whose assets/llm_schemas.py to measure too")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    sources = {"this tree": Path("assets/llm_schemas.py")}
    if args.against:
        old = Path(tempfile.mkdtemp()) / "llm_schemas.py"
        old.write_text(subprocess.run(["git", "show", f"{args.against}:assets/llm_schemas.py"], check=True,
                                      capture_output=True, text=True).stdout)
        sources = {args.against: old, **sources}
    for label, source in sources.items():
        for name, figures in measure(_schemas_module(label.replace("~", "_").replace(" ", "_"), source), info,
                                     tokenizer).items():
            print(f"{label:10} {name:20} compile {figures['compile_ms']:6.0f} ms   "
                  f"mask {figures['mask_us_per_token']:5.1f} us/token")


if __name__ == "__main__":
    main()
