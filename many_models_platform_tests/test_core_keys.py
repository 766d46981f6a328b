"""Partition-key encoding: reversible, path-safe, SQL-safe and injective."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from many_models_platform.core.keys import decode_key, encode_key, is_encoded_key, key_label
from many_models_platform.storage.lake import Lake

SAFE = re.compile(r"[A-Za-z0-9_%~.-]+")

HOSTILE = [
    "a,b",
    "a/b",
    "a\\b",
    "it's",
    'say "hi"',
    "..",
    ".",
    "...",
    "a.b",
    " ",
    "two words",
    "",
    "~",
    "~~",
    "a~b",
    "%",
    "%2E",
    "%25",
    "Zürich",
    "東京",
    "🍊🙂",
    "line\nbreak",
    "tab\there",
    "../../etc/passwd",
    "C:\\windows",
    "'; DROP TABLE predictions; --",
    "-leading-dash",
    "_",
    "plain123",
]


def assert_safe(key: str) -> None:
    assert SAFE.fullmatch(key), key
    assert ".." not in key, key
    assert not key.startswith("."), key
    assert not key.endswith("."), key
    assert is_encoded_key(key), key


@pytest.mark.parametrize("value", HOSTILE)
def test_single_value_round_trip_and_safe(value):
    key = encode_key([value])
    assert_safe(key)
    assert decode_key(key) == (value,)


@pytest.mark.parametrize("value", HOSTILE)
def test_multi_column_round_trip_with_hostile_value_in_every_position(value):
    for values in [(value, "x"), ("x", value), (value, value, value), (value, "", "~", ".")]:
        key = encode_key(values)
        assert_safe(key)
        assert decode_key(key) == values


def test_non_string_values_come_back_as_strings():
    assert decode_key(encode_key([1001, "tropicana"])) == ("1001", "tropicana")
    assert decode_key(encode_key([1.5])) == ("1.5",)


def test_plain_values_stay_readable():
    # Only characters outside [A-Za-z0-9_-] are escaped, so ordinary ids are left alone.
    assert encode_key(["seg-001"]) == "seg-001"
    assert encode_key(["1001", "minute_maid"]) == "1001.minute_maid"


def test_empty_tuple_is_rejected():
    with pytest.raises(ValueError):
        encode_key([])


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("a.b",), ("a", "b")),
        (("",), ("~",)),
        (("",), ("", "")),
        (("~",), ("", "")),
        (("a", ""), ("a",)),
        (("a", ""), ("a", "~")),
        (("a b",), ("a%20b",)),
        (("%",), ("%25",)),
        (("..",), (".", ".")),
        (("a", "b.c"), ("a.b", "c")),
        ((".",), ("",)),
    ],
)
def test_distinct_tuples_give_distinct_keys(left, right):
    assert encode_key(left) != encode_key(right)


@pytest.mark.parametrize(
    "bad",
    ["../x", "a/b", "", "a..b", ".a", "a.", ".", "..", "a\\b", "a b", "a,b", "~~", "a~b", "a.~x", "Zürich", "a\nb"],
)
def test_is_encoded_key_rejects_unsafe_strings(bad):
    assert not is_encoded_key(bad)
    with pytest.raises(ValueError):
        decode_key(bad)


def test_key_label_pairs_columns_with_decoded_values():
    key = encode_key(["1001", "a,b / c"])
    assert key_label(["store", "brand"], key) == "store=1001, brand=a,b / c"
    with pytest.raises(ValueError):  # wrong number of columns is an error, not a silent truncation
        key_label(["store"], key)


def _random_value(rng: random.Random) -> str:
    alphabet = "ab.~%/\\,'\" -_\n\t" + "Zü東京🙂" + "0123456789"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))


def test_property_round_trip_safe_and_injective_on_random_tuples():
    rng = random.Random(20240611)
    seen: dict[str, tuple[str, ...]] = {}
    for _ in range(3000):
        values = tuple(_random_value(rng) for _ in range(rng.randint(1, 4)))
        key = encode_key(values)
        assert_safe(key)
        assert decode_key(key) == values
        # injectivity: a key already seen must come from the very same tuple
        assert seen.setdefault(key, values) == values
    assert len(seen) > 1000  # the generator really produced many distinct tuples


@pytest.mark.parametrize("value", HOSTILE)
def test_lake_key_path_never_escapes_its_folder(tmp_path: Path, value):
    lake = Lake(str(tmp_path))
    path = lake.key_path("bronze", "demo", encode_key([value, value]), ".parquet")
    target = Path(path.path).resolve()
    assert target.parent == (tmp_path / "bronze" / "demo").resolve()
    assert target.name.endswith(".parquet")


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "a..b"])
def test_lake_key_path_refuses_raw_keys(tmp_path: Path, bad):
    with pytest.raises(ValueError):
        Lake(str(tmp_path)).key_path("bronze", "demo", bad, ".parquet")
