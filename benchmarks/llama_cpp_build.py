"""Build llama.cpp for one CPU class from the source the pinned llama-cpp-python vendors.

    python -m benchmarks.llama_cpp_build avx2      # tools + a llama-cpp-python for AVX2-only CPUs
    python -m benchmarks.llama_cpp_build avx512    # AVX-512 (VNNI, BF16) without AMX
    python -m benchmarks.llama_cpp_build native    # what this machine has (AMX, AVX-512 here)

This machine has AMX and AVX-512, so an AVX2-only CPU (AMD Zen 2/3, Intel Core before AVX-512)
is emulated by compiling ggml's CPU backend for AVX2 alone: none of its AVX-512, AVX-VNNI or AMX
kernels exist in that build. Memory bandwidth, caches and clock stay this machine's, so figures
measured with it are estimates.

Each class gets, under ``<cache>/<class>/`` (``<cache>`` = ``$PIXELSIFT_LLAMA_CPP_CACHE`` or
``~/.cache/pixelsift/llama.cpp``; re-used when present, rebuilt incrementally otherwise):

- ``build/bin/``: ``llama-batched-bench``, ``llama-bench``, ``llama-quantize`` and the shared
  libraries (``libllama.so``, ``libggml*.so``), linked with ``$ORIGIN`` so they can be copied;
- ``python/``: the pinned llama-cpp-python (its ``llama_cpp`` package from the same sdist) with those
  libraries in ``llama_cpp/lib``: ``PYTHONPATH=<cache>/avx2/python`` runs the in-process backend as
  an AVX2-only machine would. It is assembled from the one CMake build rather than built a second
  time by ``pip install`` (same sources, same CPU options; a pip build adds only install rules and
  ``libmtmd``, which ``llama_cpp`` loads only for multimodal chat handlers), which halves the build
  time on two cores.

The sdist is ``pip download --no-deps --no-binary :all: llama-cpp-python==<version>`` (pip's cache
serves it offline once it has been downloaded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from importlib.metadata import version as installed_version
from pathlib import Path

TOOLS = ("llama-batched-bench", "llama-bench", "llama-quantize")

# The instruction-set options of ggml/CMakeLists.txt in the vendored llama.cpp.
_AVX2 = ("SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2")
_AVX512 = ("AVX_VNNI", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16")
_AMX = ("AMX_TILE", "AMX_INT8", "AMX_BF16")
CLASSES: dict[str, list[str]] = {
    # -march=native: on this Xeon that includes ggml's AMX kernels, which crash here (see BENCHMARKS.md).
    "native": ["-DGGML_NATIVE=ON"],
    "avx2": ["-DGGML_NATIVE=OFF", *(f"-DGGML_{o}=ON" for o in _AVX2), *(f"-DGGML_{o}=OFF" for o in _AVX512 + _AMX)],
    # AVX-512 with VNNI and BF16, no AMX: AMD Zen 4/5, Intel Cooper Lake (and this Xeon without its AMX).
    "avx512": ["-DGGML_NATIVE=OFF", *(f"-DGGML_{o}=ON" for o in _AVX2 + _AVX512), *(f"-DGGML_{o}=OFF" for o in _AMX)],
}
# What llama_print_system_info() must say for each class (key: required value).
EXPECTED_FEATURES: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"AVX2": "1", "FMA": "1", "F16C": "1", "AVX512": None, "AVX512_VNNI": None, "AVX512_BF16": None,
             "AVX_VNNI": None, "AMX_INT8": None},
    "avx512": {"AVX2": "1", "AVX512": "1", "AVX512_VNNI": "1", "AVX512_BF16": "1", "AMX_INT8": None},
}
COMMON_ARGS = [
    "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON",
    # Binaries and libraries find each other next to themselves, here and once copied.
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON", "-DCMAKE_INSTALL_RPATH=$ORIGIN",
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON",
]


def llama_cpp_python_version() -> str:
    return installed_version("llama-cpp-python")


def cache_root() -> Path:
    return Path(os.environ.get("PIXELSIFT_LLAMA_CPP_CACHE", Path.home() / ".cache/pixelsift/llama.cpp"))


def class_dir(cpu: str) -> Path:
    if cpu not in CLASSES:
        raise ValueError(f"unknown CPU class {cpu!r}; choose one of {', '.join(CLASSES)}")
    return cache_root() / cpu


def bin_dir(cpu: str) -> Path:
    return class_dir(cpu) / "build" / "bin"


def python_dir(cpu: str) -> Path:
    return class_dir(cpu) / "python"


def tool(cpu: str, name: str) -> Path:
    return bin_dir(cpu) / name


def is_built(cpu: str) -> bool:
    return all(tool(cpu, t).exists() for t in TOOLS) and (python_dir(cpu) / "llama_cpp" / "lib" / "libllama.so").exists()


def sdist_source() -> Path:
    """The unpacked llama-cpp-python sdist (downloaded through pip once, then re-used)."""
    version = llama_cpp_python_version()
    src = cache_root() / "src"
    unpacked = src / f"llama_cpp_python-{version}"
    if (unpacked / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        return unpacked
    src.mkdir(parents=True, exist_ok=True)
    tarball = src / f"llama_cpp_python-{version}.tar.gz"
    if not tarball.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(src)], check=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(src, filter="data")
    return unpacked


def build_tools(cpu: str, jobs: int = 2) -> Path:
    """Configure and build the three tools and the shared libraries; incremental when re-run."""
    source = sdist_source() / "vendor" / "llama.cpp"
    build = class_dir(cpu) / "build"
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), *COMMON_ARGS, *CLASSES[cpu]],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), f"-j{jobs}", "--target", *TOOLS], check=True)
    return bin_dir(cpu)


def assemble_python(cpu: str) -> Path:
    """llama-cpp-python's pure-Python package over this class's libraries, importable with PYTHONPATH."""
    package = sdist_source() / "llama_cpp"
    target = python_dir(cpu)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(package, target / "llama_cpp", ignore=shutil.ignore_patterns("__pycache__", "lib"))
    lib = target / "llama_cpp" / "lib"
    lib.mkdir()
    for pattern in ("libllama.so*", "libggml*.so*"):  # what llama_cpp loads, not the tools' own libraries
        for path in bin_dir(cpu).glob(pattern):
            shutil.copy2(path, lib / path.name, follow_symlinks=True)
    return target


def system_info(cpu: str) -> dict[str, str]:
    """What the class's llama-cpp-python says it uses (llama_print_system_info), as feature: value."""
    probe = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"} | {"PYTHONPATH": str(python_dir(cpu))}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         check=True, cwd=python_dir(cpu)).stdout
    features = {}
    for part in out.replace("\n", " ").split("|"):
        if "=" in part:
            key, value = part.rsplit("=", 1)
            features[key.strip().split(":")[-1].strip()] = value.strip()
    return features


def check_features(cpu: str) -> dict[str, str]:
    """system_info(cpu), after checking the build has exactly the instruction sets the class allows."""
    features = system_info(cpu)
    wrong = {k: features.get(k) for k, want in EXPECTED_FEATURES[cpu].items() if features.get(k) != want}
    if wrong:
        raise RuntimeError(f"the {cpu} build does not have the instruction sets of its class: {wrong} "
                           f"(system info: {features})")
    return features


def ensure_built(cpu: str, jobs: int = 2) -> dict:
    """Build the class when it is missing; returns where everything is and the features it uses."""
    started = time.monotonic()
    fresh = not is_built(cpu)
    if fresh:
        build_tools(cpu, jobs)
        assemble_python(cpu)
    return {"cpu": cpu, "bin": str(bin_dir(cpu)), "python": str(python_dir(cpu)),
            "llama_cpp_python": llama_cpp_python_version(), "built_now": fresh,
            "build_seconds": round(time.monotonic() - started, 1) if fresh else None,
            "features": check_features(cpu)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cpu", nargs="+", choices=list(CLASSES))
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (default 2)")
    parser.add_argument("--rebuild", action="store_true", help="re-run CMake (incremental) even when built")
    args = parser.parse_args(argv)
    for cpu in args.cpu:
        if args.rebuild:
            build_tools(cpu, args.jobs)
            assemble_python(cpu)
        print(json.dumps(ensure_built(cpu, args.jobs), indent=2))


if __name__ == "__main__":
    main()
