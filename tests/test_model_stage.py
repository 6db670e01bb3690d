from assets.model_stage import run_in_chunks


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
