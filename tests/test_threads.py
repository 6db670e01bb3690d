"""Item 8 of issue 10: a model step uses its share of the cores, not every core in every step process."""

from __future__ import annotations

import torch

from resources import torch_runtime
from resources.concurrency import MAX_CONCURRENT_STEPS


def test_cores_come_from_the_affinity_and_the_container_quota(tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 CPUs
    assert torch_runtime.available_cores(quota) == 1
    quota.write_text("max 100000\n")
    assert torch_runtime.available_cores(quota) == torch_runtime.available_cores(tmp_path / "missing")


def test_the_steps_that_run_at_once_share_the_cores(monkeypatch):
    monkeypatch.setattr(torch_runtime, "available_cores", lambda: 16)
    monkeypatch.delenv("PIXELSIFT_STEPS_AT_ONCE", raising=False)
    assert torch_runtime.threads_per_step() == 16 // MAX_CONCURRENT_STEPS
    monkeypatch.setenv("PIXELSIFT_STEPS_AT_ONCE", "1")  # what `pixelsift run` sets: one step at a time
    assert torch_runtime.threads_per_step() == 16
    monkeypatch.setattr(torch_runtime, "available_cores", lambda: 1)
    monkeypatch.setenv("PIXELSIFT_STEPS_AT_ONCE", "4")
    assert torch_runtime.threads_per_step() == 1


def test_loading_a_model_sets_the_step_thread_count(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(torch_runtime, "available_cores", lambda: 3)
    monkeypatch.setenv("PIXELSIFT_STEPS_AT_ONCE", "3")
    try:
        torch.set_num_threads(2)
        torch_runtime.load_once(("test_threads", object()), lambda: "model")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
