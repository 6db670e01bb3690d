#!/usr/bin/env bash
# The GPU benchmark as run for BENCHMARKS.md, from the repository root on a CUDA machine:
#   bash benchmarks/run_gpu.sh OUTPUT_DIR
# Builds the full-size random-weight models on the GPU (once, ~16 GB under $MODELS_DIR), runs every
# stage naive and optimised, then the parity tests on the GPU; logs and raw figures go to OUTPUT_DIR
# (the JSON is rewritten after every stage, so a run cut short keeps what it measured).
set -o pipefail
out=${1:?usage: run_gpu.sh OUTPUT_DIR}
models_dir=${MODELS_DIR:-/tmp/pixelsift-bench-models}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys; from importlib.metadata import version as v; print('python', sys.version.split()[0], *(f'| {p} {v(p)}' for p in ('torch', 'transformers', 'xgrammar', 'open_clip_torch')))"
  lscpu | grep -E '^(Model name|CPU\(s\))'
} 2>&1 | tee "$out/environment.txt"

# PHI3_TOKENIZER_DIR: the Phi-3 stand-in tokenizer saved elsewhere (building it needs the corpus package).
python3 - "$models_dir" "${PHI3_TOKENIZER_DIR:-}" <<'EOF' 2>&1 | tee "$out/build.log" || exit 1
import sys, time
from functools import partial
from pathlib import Path
import torch
from transformers import AutoTokenizer
from benchmarks.full_size import build_blip2_opt_27b, build_phi35_mini
root, tokenizer_dir = Path(sys.argv[1]), sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else None
for name, build in (("blip2", build_blip2_opt_27b), ("phi35", partial(build_phi35_mini, tokenizer=tokenizer))):
    started = time.perf_counter()
    build(root / name, "cuda" if torch.cuda.is_available() else "cpu")
    torch.cuda.empty_cache()
    print(f"{name}: ready in {time.perf_counter() - started:.0f} s", flush=True)
EOF

# PHOTOS=1: camera-sized 4032x3024 JPEGs instead of the small sample photos (decoding then matters).
images=data/images/sample
if [ -n "${PHOTOS:-}" ]; then
  images=/tmp/pixelsift-photos
  python3 -m benchmarks.decoding --write "$images" --count 64 2>&1 | tee "$out/photos.log"
fi

timeout "${BENCH_TIMEOUT:-1800}" python3 -m benchmarks --models full --models-dir "$models_dir" --images "$images" \
  --count "${COUNT:-512}" --naive-count 8 --caption-batch 64,128,256 --llm-batch 128,256,512 \
  --output "$out/full-cuda${PHOTOS:+-photos}.json" 2>&1 | tee "$out/bench.log"

PIXELSIFT_TEST_DEVICE=cuda timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_parity.py 2>&1 | tee "$out/parity.log"
