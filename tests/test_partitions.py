import pytest

from resources.batch_keys import InvalidBatchKey, validate_batch_key


@pytest.mark.parametrize("key", ["sample", "2024-06_holiday", "a.b", "X1"])
def test_valid_keys_pass(key):
    assert validate_batch_key(key) == key


@pytest.mark.parametrize(
    "key, words",
    [
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("a/b", "separator"),
        ("a\\b", "separator"),
        (".hidden", "hidden"),
        ("", "non-empty"),
        ("with space", "letters"),
        ("-dash", "letters"),
        ("x" * 129, "1-128"),
    ],
)
def test_invalid_keys_are_rejected_with_a_reason(key, words):
    with pytest.raises(InvalidBatchKey) as info:
        validate_batch_key(key)
    assert words in str(info.value)
