"""Run a benchmark as if on an AVX2-only CPU (Intel Core before AVX-512, AMD Zen 2/3), on a CPU with more.

The four variables cap what each kernel library may use: torch's own kernels
(``ATEN_CPU_CAPABILITY``), oneDNN's (``ONEDNN_MAX_CPU_ISA``: bf16 matmuls, no AMX), MKL's
(``MKL_ENABLE_INSTRUCTIONS``: float32 GEMM) and FBGEMM's (``FBGEMM_ENABLE_INSTRUCTIONS``: the x86
engine's dynamic int8 linear layers, no VNNI). They must be set before torch is imported, so an
emulated measurement runs in a child process. torch and oneDNN report what they use (checked
below); FBGEMM does not, so its cap shows only in the int8 timings.
Memory bandwidth, caches and clock stay this machine's: emulated figures are estimates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}

_PROBE = """
import warnings, torch
warnings.simplefilter("ignore")
print("capability", torch.backends.cpu.get_cpu_capability(), flush=True)
torch.backends.quantized.engine = "onednn"
layer = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(256, 256)), {torch.nn.Linear})
with torch.inference_mode():
    layer(torch.randn(4, 256))
"""


def emulated_env(cpu: str) -> dict[str, str]:
    """The environment of a child process measuring CPU class ``cpu`` ('native' or 'avx2'). For
    avx2, llama.cpp too is the AVX2-only build where ``benchmarks/llama_cpp_build.py`` made one
    (first on the child's PYTHONPATH); without it llama.cpp would use every instruction this CPU has."""
    if cpu == "native":
        return {k: v for k, v in os.environ.items() if k not in AVX2_ENV}
    if cpu == "avx2":
        from benchmarks.llama_cpp_build import is_built, python_dir

        env = os.environ | AVX2_ENV
        if is_built("avx2"):
            paths = [str(python_dir("avx2")), os.getcwd(), env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        return env
    raise ValueError(f"unknown CPU class {cpu!r}; choose native or avx2")


def check_emulation(cpu: str) -> dict[str, str]:
    """What the kernels really use under ``emulated_env(cpu)``: torch's capability, oneDNN's ISA and
    its int8 matmul implementation (from ONEDNN_VERBOSE), so a table says what it measured."""
    out = subprocess.run([sys.executable, "-c", _PROBE], env=emulated_env(cpu) | {"ONEDNN_VERBOSE": "1"},
                         capture_output=True, text=True, check=True).stdout
    found = {"cpu": cpu}
    for line in out.splitlines():
        if line.startswith("capability "):
            found["torch_capability"] = line.split()[1]
        elif ",info,cpu,isa:" in line:
            found["onednn_isa"] = line.split("isa:", 1)[1]
        elif ",exec,cpu,matmul," in line:
            found["onednn_int8_matmul"] = line.split(",")[6]
    if cpu == "avx2" and (found.get("torch_capability") != "AVX2" or "AVX2" not in found.get("onednn_isa", "")):
        raise RuntimeError(f"AVX2 emulation did not take: {found}")
    return found


_SPEED = """
import time, torch
a, b = torch.randn(1024, 4096), torch.randn(4096, 4096)
for _ in range(3):
    a @ b
rates = []
for _ in range(5):
    start = time.perf_counter()
    for _ in range(4):
        a @ b
    rates.append(4 * 2 * 1024 * 4096 * 4096 / (time.perf_counter() - start) / 1e9)
print(sorted(rates)[2])
"""


def float32_gflops(cpu: str) -> float:
    """This machine's float32 matmul rate now (GFLOP/s, median of 5, every core) under ``cpu``'s caps.
    The machines are shared: a figure taken beside it says how fast the machine was at the time,
    so runs of different hours or machines can be compared (BENCHMARKS.md: 150-170 for an idle
    2-core EPYC under the AVX2 caps)."""
    out = subprocess.run([sys.executable, "-c", _SPEED], env=emulated_env(cpu), capture_output=True, text=True, check=True)
    return round(float(out.stdout), 1)


def measure_in_child(module: str, cpu: str) -> None:
    """Run ``python -m module`` again with this process's arguments and ``--in-child``, capped to
    ``cpu``, and print ``{"emulation": what the kernels use, "rows": the JSON the child printed}``.
    The child's stderr (progress, errors) passes through; its failure is this process's."""
    checked = check_emulation(cpu)
    child = subprocess.run([sys.executable, "-m", module, *sys.argv[1:], "--in-child"], env=emulated_env(cpu),
                           stdout=subprocess.PIPE, text=True)
    if child.returncode:
        sys.exit(child.returncode)
    print(json.dumps({"emulation": checked, "rows": json.loads(child.stdout)}, indent=1))
