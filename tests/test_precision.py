"""Issue 14: the precision a model step runs in, chosen per CPU class and part of the reuse fingerprint."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from resources import int8_linear, precision
from resources.captioner import CaptionerResource
from resources.int8_linear import Int8Linear
from resources.metadata_llm import MetadataLLMResource

AMX_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8"})
HAS_FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines


@pytest.fixture(params=int8_linear.KERNELS)
def int8_kernel(request, monkeypatch) -> str:
    """Each integer kernel in turn as the one int8 layers multiply with (FBGEMM where torch has it)."""
    if request.param == "fbgemm" and not HAS_FBGEMM:
        pytest.skip("this torch has no FBGEMM (not an x86 build)")
    monkeypatch.setattr(int8_linear, "kernel", lambda: request.param)
    return request.param


def test_the_cpu_class_is_capped_by_the_capability_torch_uses():
    assert precision.classify(AMX_FLAGS, "AVX512") == "amx"
    assert precision.classify(AMX_FLAGS - {"amx_bf16"}, "AVX512") == "avx512_bf16"
    assert precision.classify(frozenset({"avx2", "fma", "avx512f"}), "AVX512") == "avx512"
    # ATEN_CPU_CAPABILITY=avx2 (the AVX2 emulation) makes an AMX machine choose as an AVX2 one would
    assert precision.classify(AMX_FLAGS, "AVX2") == "avx2"
    assert precision.classify(frozenset({"avx2"}), "AVX2") == "other"  # no FMA: not the AVX2 class
    assert precision.classify(frozenset(), "DEFAULT") == "other"
    assert precision.cpu_class() in (*precision.CPU_CLASSES, "other")


@pytest.mark.parametrize("cpu, expected", [("amx", "bfloat16"), ("avx512_bf16", "bfloat16"), ("avx2", "float32"),
                                           ("other", "float32")])
def test_auto_picks_the_measured_choice_for_the_cpu_class(monkeypatch, cpu, expected):
    monkeypatch.setattr(precision, "cpu_class", lambda: cpu)
    for stage in precision.AUTO_CPU:
        assert precision.resolve_precision("auto", "cpu", stage) == expected
        assert precision.resolve_precision("auto", "cuda:1", stage) == "bfloat16"
        assert precision.resolve_precision("int8", "cpu", stage) == "int8"


def test_a_precision_the_device_cannot_run_is_a_clear_error():
    with pytest.raises(ValueError, match="CPU only"):
        precision.resolve_precision("int8", "cuda", "metadata_llm")
    with pytest.raises(ValueError, match="unknown dtype 'int4'.*int8"):
        precision.resolve_precision("int4", "cpu", "metadata_llm")


def test_the_precision_auto_chooses_is_part_of_the_reuse_fingerprint(monkeypatch):
    # The same settings on two CPU classes: auto means bf16 on one and float32 on the other,
    # and their outputs differ (BENCHMARKS.md, "CPU classes"), so results are not reused across.
    for resource in (MetadataLLMResource, CaptionerResource):
        prints = {}
        for cpu in ("amx", "avx2"):
            monkeypatch.setattr(precision, "cpu_class", lambda cpu=cpu: cpu)
            prints[cpu] = resource(device="cpu").fingerprint()
        assert prints["amx"] == resource(device="cpu", dtype="bfloat16").fingerprint()
        assert prints["avx2"] == resource(device="cpu", dtype="float32").fingerprint()
        assert len({*prints.values(), resource(device="cpu", dtype="int8").fingerprint()}) == 3


def test_int8_quantises_every_linear_layer_but_the_kept_ones():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).bfloat16()
    x = torch.randn(4, 16)
    reference = model.float()(x)
    quantised = precision.apply_precision(model.bfloat16(), "int8", keep=("2",))
    assert type(quantised[0]) is Int8Linear and quantised[0].weight_int8_by_input.dtype == torch.int8
    assert type(quantised[2]) is torch.nn.Linear and quantised[2].weight.dtype == torch.float32
    assert (quantised(x) - reference).norm() / reference.norm() < 0.05  # int8 and bf16 rounding only
    assert precision.load_dtype("int8") == torch.bfloat16 and precision.compute_dtype("int8") == torch.float32


def test_int8_gives_each_token_its_own_scale(int8_kernel):
    # One token 1000x louder than the rest: with one scale per call (PyTorch's dynamic int8 on
    # FBGEMM, what int8 was) the quiet tokens round to nothing; per token each keeps its own
    # precision, on either integer kernel (FBGEMM's is per call, so each row is scaled before it).
    from benchmarks.precision import fbgemm_int8

    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 64)
    x = torch.randn(8, 3, 256)
    x[0, 0] *= 1000
    with torch.inference_mode():
        reference = linear(x)
        layer = Int8Linear(linear)
        ours = layer(x)
        per_call = fbgemm_int8(torch.nn.Sequential(copy.deepcopy(linear)))(x)
    assert layer.kernel == int8_kernel and (layer._packed is not None) == (int8_kernel == "fbgemm")
    quiet = (slice(1, None),)  # every row but the loud token's

    def error(out):
        return float((out[quiet] - reference[quiet]).norm() / reference[quiet].norm())

    assert ours.shape == reference.shape == (8, 3, 64)
    assert error(ours) < 0.02 and error(per_call) > 0.5


def test_the_int8_variants_benchmark_rounds_as_the_int8_layers_do(int8_kernel):
    # benchmarks/int8_variants.py weighs rounding schemes in float32 arithmetic; its figures say
    # something about int8 only if its "now" is what Int8Linear computes.
    from benchmarks.int8_variants import RoundedLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 128)
    x = torch.randn(16, 512)
    x[:, 7] *= 30  # an outlier channel, kept in float32 by both
    with torch.inference_mode():
        reference, real = linear(x), Int8Linear(linear)(x)
        rounded = RoundedLinear(linear, pair_safe=int8_linear.pairs_saturate())(x)

    def distance(a, b):
        return float((a - b).norm() / b.norm())

    if int8_kernel == "onednn":  # the same integers, multiplied exactly: only float32's rounding differs
        assert distance(rounded, real) < 1e-5
    else:  # FBGEMM rounds each call on its own unsigned grid: other roundings, as coarse
        assert 0.7 < distance(rounded, reference) / distance(real, reference) < 1.4
    assert distance(real, reference) > 1e-3  # the layer does round


def test_int8_layers_are_packed_on_every_core_and_the_process_engine_is_left_as_it_was(monkeypatch):
    # prepare_all packs layers in threads; torch's quantised engine is one process-wide setting,
    # which threads switching it each for itself would leave at random.
    if not HAS_FBGEMM:
        pytest.skip("this torch has no FBGEMM (not an x86 build)")
    monkeypatch.setattr(int8_linear, "kernel", lambda: "fbgemm")
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(8)])
    x = torch.randn(5, 64)
    with torch.inference_mode():
        reference = model(x)
        before = torch.backends.quantized.engine
        quantised = int8_linear.prepare_all(int8_linear.quantise_linears(model))
        assert torch.backends.quantized.engine == before
        assert all(layer._packed is not None for layer in quantised)
        assert (quantised(x) - reference).norm() / reference.norm() < 0.05


WITHOUT_VNNI = """
import sys
import torch
from resources import int8_linear
from resources.int8_linear import Int8Linear

torch.manual_seed(0)
linear = torch.nn.Linear(512, 256)  # uniform weights: many neighbours large together
x = torch.randn(64, 512)
if sys.argv[1] == "unsafe":  # the scales int8 had before: every channel's largest weight at 127
    int8_linear.pairs_saturate = lambda: False
with torch.inference_mode():
    error = float((Int8Linear(linear)(x) - linear(x)).norm() / linear(x).norm())
print(int8_linear.kernel(), int8_linear.pairs_saturate(), round(error, 4))
"""


@pytest.mark.parametrize("capped", [{"ONEDNN_MAX_CPU_ISA": "AVX2"},
                                    {"ONEDNN_MAX_CPU_ISA": "AVX2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}],
                         ids=["onednn-avx2", "both-avx2"])
def test_int8_scales_its_weights_for_a_kernel_that_sums_products_in_16_bits(capped):
    # Integer GEMMs without VNNI (AVX2-only CPUs), forced here as on any x86 CPU: the kernel
    # int8 picks is probed as saturating, and the weights scaled for it; scaled the usual way,
    # its 16-bit sums saturated (about 12% off on these weights, 1.1% with pair-safe scales).
    def run(scales):
        out = subprocess.run([sys.executable, "-c", WITHOUT_VNNI, scales], env=os.environ | capped,
                             capture_output=True, text=True, check=True)
        return out.stdout.split()

    kernel, saturates, error = run("pair-safe")
    assert saturates == "True" and float(error) < 0.02
    if "FBGEMM_ENABLE_INSTRUCTIONS" in capped:
        assert kernel == "fbgemm"  # the faster kernel without VNNI (BENCHMARKS.md, "int8 on FBGEMM's kernels")
    assert float(run("unsafe")[2]) > 0.05


def test_an_unknown_int8_kernel_is_refused(monkeypatch):
    monkeypatch.setenv("PIXELSIFT_INT8_KERNEL", "mkl")
    int8_linear.kernel.cache_clear()
    try:
        with pytest.raises(ValueError, match="PIXELSIFT_INT8_KERNEL='mkl': choose auto, fbgemm or onednn"):
            int8_linear.kernel()
    finally:
        int8_linear.kernel.cache_clear()


def test_int8_agrees_with_float32_on_a_trained_model_next_token_by_next_token(smollm2_model_dir):
    # SmolLM2 teacher-forced on float32's metadata document (benchmarks/precision.py forced): the
    # next token int8 finds most likely is float32's at 98% of positions on eight captions
    # (BENCHMARKS.md, "int8 per token"); PyTorch's dynamic int8, what int8 was before, at 80%.
    from benchmarks.precision import CAPTIONS, measure_forced

    rows = {r["variant"]: r for r in measure_forced(smollm2_model_dir, ("int8", "int8-fbgemm"), CAPTIONS[:1])}
    assert rows["int8"]["positions"] > 50
    assert rows["int8"]["top1_agreement"] > 0.95 > rows["int8-fbgemm"]["top1_agreement"]
    assert rows["int8"]["mean_kl"] < rows["int8-fbgemm"]["mean_kl"] / 10


def test_the_avx2_emulation_takes_in_every_kernel_library_that_reports():
    from benchmarks.cpu_emulation import check_emulation

    found = check_emulation("avx2")  # raises where torch or oneDNN still use more than AVX2
    assert found["torch_capability"] == "AVX2" and "AVX2" in found["onednn_isa"]
    assert "amx" not in found.get("onednn_int8_matmul", "")


def test_int8_smollm2_still_writes_valid_metadata(smollm2_model_dir):
    # The trained model as the pipeline runs it (constrained greedy decoding, the metadata schema).
    # int8 changes more of SmolLM2's next tokens than bf16 or llama.cpp's Q8_0 do (BENCHMARKS.md,
    # "int8 per token"), which is why auto never picks it for speed; as the fallback where float32
    # does not fit it must still give valid documents.
    from benchmarks.precision import CAPTIONS, measure_smollm2

    rows = {r["precision"]: r for r in measure_smollm2(smollm2_model_dir, ("float32", "int8"), CAPTIONS[:1], rounds=1)}
    assert rows["float32"]["token_agreement"] == 1.0 and rows["float32"]["documents_equal"] == 1.0
    assert rows["int8"]["valid_documents"] == rows["float32"]["valid_documents"] == 1.0  # ImageMetadataOutput
