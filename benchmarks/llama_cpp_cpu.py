"""The metadata LLM on llama.cpp per CPU class: seconds per image from llama-batched-bench.

    python -m benchmarks.llama_cpp_cpu --cpu avx2 native --quant Q8_0 Q4_K_M
    python -m benchmarks.llama_cpp_cpu --quick        # tiny model, avx2 build: checks it runs

Builds come from ``benchmarks/llama_cpp_build`` (``avx2`` emulates an AVX2-only CPU on this one),
models from ``benchmarks/gguf_shapes`` (random weights, Phi-3.5-mini's shapes). The workload is
the project's own metadata benchmark (``benchmarks/results/full-cpu.json``, image_metadata,
optimised): a shared prefix (system prompt and instructions) prefilled once, then per image its
unique prompt suffix (the caption and the chat template's closing tokens) and its generated
tokens, 58% of them forced by the schema. Forced tokens still go through the model
(jump-forward only batches them), so they are counted as generated.

For each build, quantisation and number of parallel sequences (npl), two runs at ``--threads``:

- suffix prefill: ``llama-batched-bench -npp <suffix> -ntg 1 -npl ...`` (one process, all npl):
  npl sequences' suffixes prefilled in one batch, as the pipeline does;
- generation: ``llama-batched-bench -pps -kvu -npp <prefix+suffix> -ntg <ntg> -npl <npl>`` (one
  process per npl, under ``/usr/bin/time -v`` for its peak RSS): the prompt is prefilled once and
  shared by every sequence (unified KV cache), then npl sequences decode together. The context
  is sized for the real workload (prefix + npl x (suffix + generated)), so the KV cache in the
  peak RSS is the one a real batch needs. ``ntg`` is shorter than the real generation (time);
  decode speed barely changes over it (attention over ~300 positions is ~3% of the work).

seconds per image = suffix / suffix-prefill t/s + generated / aggregate decode t/s
                    + prefix / shared-prefill t/s / npl (the prefix once per batch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import gguf_shapes, llama_cpp_build

RESULTS = Path(__file__).parent / "results"
METADATA_RUN = RESULTS / "full-cpu.json"
# transformers float32, the same stage, issue 14's 2-core AVX2-only EPYC (measured there, not here).
TRANSFORMERS_FP32_AVX2_S_PER_IMAGE = 30.4


@dataclass(frozen=True)
class Workload:
    prefix: int  # shared prompt tokens, prefilled once
    suffix: float  # unique prompt tokens per image
    generated: float  # tokens per image through the model (sampled + forced)
    forced_share: float  # of generated, forced by the schema (jump-forward)


def metadata_workload(path: Path = METADATA_RUN) -> Workload:
    """Per-image token counts of the project's full-size metadata benchmark (optimised path)."""
    run = json.loads(path.read_text())
    stage = max((s for s in run["stages"] if s["stage"] == "image_metadata" and s["path"] == "optimised"),
                key=lambda s: s["batch_size"])
    details, items = stage["details"], stage["items"]
    prefix = details["shared_prefix_tokens"]
    # prompt_tokens counts the shared prefix once (benchmarks/stages.py).
    return Workload(prefix=prefix, suffix=(stage["prompt_tokens"] - prefix) / items,
                    generated=stage["generated_tokens"] / items,
                    forced_share=details["jump_forward_tokens"] / stage["generated_tokens"])


def _bench_lines(output: str) -> list[dict]:
    return [json.loads(line[line.index("{"):]) for line in output.splitlines() if '"n_kv_max"' in line]


def _run(cmd: list[str], timeout: float) -> tuple[str, float | None]:
    """Output of a tool run under /usr/bin/time -v, and its peak RSS in GiB."""
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return done.stdout + done.stderr, (int(rss.group(1)) / 2**20 if rss else None)


def suffix_prefill(cpu: str, model: Path, work: Workload, npl: list[int], threads: int, timeout: float) -> dict[int, float]:
    """Prompt t/s when npl sequences' unique suffixes are prefilled in one batch."""
    suffix = max(1, round(work.suffix))
    ctx = 256 * math.ceil(max(npl) * (suffix + 1) / 256)
    out, _ = _run([str(llama_cpp_build.tool(cpu, "llama-batched-bench")), "-m", str(model), "-t", str(threads),
                   "-tb", str(threads), "-c", str(ctx), "-b", "2048", "-ub", "512", "-npp", str(suffix), "-ntg", "1",
                   "-npl", ",".join(map(str, npl)), "--output-format", "jsonl"], timeout)
    return {r["pl"]: r["speed_pp"] for r in _bench_lines(out)}


def shared_decode(cpu: str, model: Path, work: Workload, n: int, ntg: int, threads: int, timeout: float) -> dict:
    """Shared prompt prefilled once, then n sequences decoding together; with the process's peak RSS."""
    prompt = work.prefix + max(1, round(work.suffix))
    ctx = 256 * math.ceil((work.prefix + n * (work.suffix + work.generated)) / 256)
    out, rss = _run([str(llama_cpp_build.tool(cpu, "llama-batched-bench")), "-m", str(model), "-t", str(threads),
                     "-tb", str(threads), "-c", str(ctx), "-b", "2048", "-ub", "512", "-pps", "-kvu",
                     "-npp", str(prompt), "-ntg", str(ntg), "-npl", str(n), "--output-format", "jsonl"], timeout)
    (row,) = _bench_lines(out)
    return {"ctx": ctx, "shared_prefill_tps": row["speed_pp"], "decode_tps": row["speed_tg"],
            "decode_seconds": row["t_tg"], "peak_rss_gib": rss}


def llama_bench(cpu: str, model: Path, threads: int, timeout: float, quick: bool) -> dict:
    """llama-bench's standard pp/tg figures at these threads, as a sanity check of the build."""
    pp, tg = ("16", "4") if quick else ("64", "16")
    out, _ = _run([str(llama_cpp_build.tool(cpu, "llama-bench")), "-m", str(model), "-t", str(threads),
                   "-p", pp, "-n", tg, "-r", "2", "-o", "json"], timeout)
    rows = json.loads(out[out.index("["):out.rindex("]") + 1])
    return {("pp" if r["n_prompt"] else "tg") + (r["n_prompt"] or r["n_gen"]).__str__(): round(r["avg_ts"], 2)
            for r in rows}


def seconds_per_image(work: Workload, n: int, suffix_tps: float, run: dict) -> dict:
    suffix = work.suffix / suffix_tps
    decode = work.generated / run["decode_tps"]
    prefix = work.prefix / run["shared_prefill_tps"] / n
    # Lower bound: forced tokens at the suffix-prefill rate, as if jump-forward fed them as one chunk.
    forced = work.generated * work.forced_share
    lower = suffix + prefix + (work.generated - forced) / run["decode_tps"] + forced / suffix_tps
    return {"s_per_image": round(suffix + decode + prefix, 3), "s_suffix": round(suffix, 3),
            "s_decode": round(decode, 3), "s_prefix": round(prefix, 3), "s_per_image_forced_as_prefill": round(lower, 3)}


def run(cpus: list[str], quants: list[str], npl: list[int], threads: int, ntg: int, quick: bool,
        f16_npl: list[int], timeout: float, out: Path | None = None) -> dict:
    """Every row, with the JSON rewritten after each (``complete`` false until the end) so a long run
    stopped early keeps what it measured."""
    shapes = gguf_shapes.SHAPES["tiny" if quick else "phi35"]
    work = metadata_workload()
    _, vocab = gguf_shapes._tokenizer_fields()
    result = {"command": " ".join(["python -m benchmarks.llama_cpp_cpu", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": {"platform": platform.platform(), "cpu_threads": os.cpu_count(),
                          "cpu_flags": sorted(f for f in _cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c")))},
              "workload": asdict(work), "threads": threads, "ntg_measured": ntg,
              "model": {"shapes": asdict(shapes), "vocab": vocab, "note": gguf_shapes.vocab_note(shapes, vocab)},
              "transformers_fp32_avx2_s_per_image": TRANSFORMERS_FP32_AVX2_S_PER_IMAGE,
              "builds": {}, "rows": [], "llama_bench": [], "complete": False}
    for cpu in cpus:
        if not llama_cpp_build.is_built(cpu):
            raise SystemExit(f"llama.cpp is not built for {cpu}: python -m benchmarks.llama_cpp_build {cpu}")
        result["builds"][cpu] = llama_cpp_build.ensure_built(cpu)
    # Quantise with a build that exists (the file is the same whichever build writes it).
    models = gguf_shapes.ensure_gguf(shapes, quants, cpu=cpus[0], keep_f16="F16" in quants)
    for cpu in cpus:
        for quant in quants:
            if quant == "F16" and cpu != "avx2" and not quick:
                continue  # F16 is the AVX2 class's reference only
            sizes = f16_npl if quant == "F16" else npl
            load = os.getloadavg()[0]
            suffix_tps = suffix_prefill(cpu, models[quant], work, sizes, threads, timeout)
            for n in sizes:
                measured = shared_decode(cpu, models[quant], work, n, ntg, threads, timeout)
                row = {"cpu": cpu, "quant": quant, "npl": n, "gguf_gib": round(models[quant].stat().st_size / 2**30, 2),
                       "suffix_prefill_tps": round(suffix_tps[n], 2), **measured,
                       **seconds_per_image(work, n, suffix_tps[n], measured),
                       "load_average": [round(load, 2), round(os.getloadavg()[0], 2)]}
                row["decode_tps"] = round(row["decode_tps"], 2)
                row["shared_prefill_tps"] = round(row["shared_prefill_tps"], 2)
                row["peak_rss_gib"] = round(row["peak_rss_gib"], 2) if row["peak_rss_gib"] else None
                result["rows"].append(row)
                print(_format_row(row), flush=True)
                _save(result, out)
        result["llama_bench"].append({"cpu": cpu, "quant": quants[0],
                                      **llama_bench(cpu, models[quants[0]], threads, timeout, quick)})
    result["complete"] = True
    _save(result, out)
    return result


def _save(result: dict, out: Path | None) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _format_row(row: dict) -> str:
    return (f"{row['cpu']:6} {row['quant']:7} npl {row['npl']:3}: suffix prefill {row['suffix_prefill_tps']:8.1f} t/s, "
            f"decode {row['decode_tps']:7.2f} t/s, {row['s_per_image']:6.2f} s/image "
            f"(forced as prefill {row['s_per_image_forced_as_prefill']:.2f}), peak RSS {row['peak_rss_gib']} GiB, "
            f"load {row['load_average']}")


def markdown(result: dict) -> str:
    """The rows as the BENCHMARKS.md table."""
    lines = ["| build | quant | GGUF GiB | npl | suffix prefill t/s | decode t/s (all sequences) | metadata s/image "
             "| forced tokens as prefill | peak RSS GiB | load avg |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['cpu']} | {r['quant']} | {r['gguf_gib']} | {r['npl']} | {r['suffix_prefill_tps']:.1f} | "
                     f"{r['decode_tps']:.2f} | **{r['s_per_image']:.2f}** | {r['s_per_image_forced_as_prefill']:.2f} | "
                     f"{r['peak_rss_gib']} | {r['load_average'][0]}-{r['load_average'][1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", nargs="+", default=["avx2", "native"], choices=list(llama_cpp_build.CLASSES))
    parser.add_argument("--quant", nargs="+", default=["Q8_0", "Q4_K_M"], choices=gguf_shapes.QUANTS)
    parser.add_argument("--npl", type=int, nargs="+", default=[1, 4, 8, 16, 32], help="parallel sequences")
    parser.add_argument("--f16-npl", type=int, nargs="+", default=[1, 16], help="npl for F16 (slow)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ntg", type=int, default=32, help="tokens decoded per sequence in the measurement")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per tool run")
    parser.add_argument("--quick", action="store_true", help="tiny model, avx2 build, npl 1 and 2: checks it runs")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/llama-cpp-cpu.json; "
                                                 "--quick writes none unless given)")
    parser.add_argument("--table", type=Path, help="print a results JSON as the BENCHMARKS.md table, and stop")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return
    if args.quick:
        args.cpu, args.quant, args.npl, args.f16_npl, args.ntg = ["avx2"], ["Q8_0"], [1, 2], [1], 4
    out = args.out or (None if args.quick else RESULTS / "llama-cpp-cpu.json")
    run(args.cpu, args.quant, args.npl, args.threads, args.ntg, args.quick, args.f16_npl, args.timeout, out)
    if out:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
