import pytest

from assets.model_stage import run_in_chunks
from resources.backends import ModelLoadError


def test_chunks_retries_and_isolates_a_failing_item():
    calls = []

    def fn(chunk):
        calls.append(list(chunk))
        if 5 in chunk:
            raise ValueError("bad item 5")
        return [x * 10 for x in chunk]

    out = run_in_chunks(list(range(8)), fn, chunk_size=3, retries=1)
    assert out[:5] == [0, 10, 20, 30, 40] and out[6:] == [60, 70]
    assert isinstance(out[5], ValueError)
    # chunk [3,4,5] tried twice, then 3, 4 alone once each and 5 alone twice
    assert calls.count([3, 4, 5]) == 2 and calls.count([5]) == 2 and calls.count([3]) == 1


def test_each_chunks_outcomes_are_handed_over_as_they_are_known():
    def fn(chunk):
        if 4 in chunk:
            raise ValueError("bad item 4")
        return [x * 10 for x in chunk]

    seen = []
    out = run_in_chunks(list(range(6)), fn, chunk_size=3, retries=0,
                        on_chunk=lambda chunk, outcomes: seen.append((list(chunk), outcomes)))
    assert [chunk for chunk, _ in seen] == [[0, 1, 2], [3, 4, 5]]
    assert seen[0][1] == [0, 10, 20]
    assert seen[1][1][0] == 30 and isinstance(seen[1][1][1], ValueError) and seen[1][1][2] == 50
    assert [o for _, outcomes in seen for o in outcomes] == out


def test_transient_failure_is_retried():
    state = {"failed": False}

    def flaky(chunk):
        if not state["failed"]:
            state["failed"] = True
            raise TimeoutError("once")
        return list(chunk)

    assert run_in_chunks([1, 2], flaky, chunk_size=2, retries=1) == [1, 2]


def test_wrong_result_count_is_a_failure():
    out = run_in_chunks([1], lambda chunk: [], chunk_size=1, retries=0)
    assert isinstance(out[0], RuntimeError)


def test_a_model_that_cannot_load_fails_at_once_instead_of_per_item():
    calls = []

    def unloadable(chunk):
        calls.append(list(chunk))
        raise ModelLoadError("could not load model")

    with pytest.raises(ModelLoadError):
        run_in_chunks([1, 2, 3], unloadable, chunk_size=2, retries=3)
    assert calls == [[1, 2]]


def test_load_failures_are_remembered(monkeypatch):
    from resources import torch_runtime

    monkeypatch.setattr(torch_runtime, "_cache", {})
    attempts = []

    def loader():
        attempts.append(1)
        raise OSError("hub unreachable")

    for _ in range(3):
        with pytest.raises(ModelLoadError, match="hub unreachable.*--models tiny"):
            torch_runtime.load_once(("x", "some/model"), loader)
    assert len(attempts) == 1


def test_a_large_model_releases_the_other_large_ones(monkeypatch):
    import weakref

    from resources import torch_runtime

    monkeypatch.setattr(torch_runtime, "_cache", {})
    monkeypatch.setattr(torch_runtime, "_large", set())

    class Model:
        pass

    loads = []

    def loader(name):
        loads.append(name)
        return Model()

    captioner = weakref.ref(torch_runtime.load_once(("blip2",), lambda: loader("blip2"), large=True))
    clip = torch_runtime.load_once(("clip",), lambda: loader("clip"))
    assert torch_runtime.load_once(("blip2",), lambda: loader("blip2"), large=True) is captioner()  # cached
    llm = torch_runtime.load_once(("phi",), lambda: loader("phi"), large=True)
    assert captioner() is None  # released, not just forgotten: nothing else held it
    assert torch_runtime.load_once(("clip",), lambda: loader("clip")) is clip  # small models stay
    assert torch_runtime.load_once(("phi",), lambda: loader("phi"), large=True) is llm
    assert loads == ["blip2", "clip", "phi"]
