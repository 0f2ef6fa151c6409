import pytest

from swarmheap import format_size, parse_size
from swarmheap.sizes import format_seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 GiB", 1 << 30),
        ("512MiB", 512 << 20),
        ("64 MB", 64_000_000),
        ("4k", 4096),
        ("100", 100),
        ("1.5 KiB", 1536),
        (4096, 4096),
        ("0", 0),
    ],
)
def test_parse(text: "str | int", expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "abc", "12 parsecs", "-5 MiB", "1e3", "GiB"])
def test_parse_rejects_with_a_hint(bad: str) -> None:
    with pytest.raises(ValueError, match="64 MiB"):
        parse_size(bad)


@pytest.mark.parametrize("bad", [1.5, None, True, b"1 GiB"])
def test_parse_type_errors(bad: object) -> None:
    with pytest.raises(TypeError):
        parse_size(bad)  # type: ignore[arg-type]


def test_negative_int() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_size(-1)


def test_format() -> None:
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(64 << 20) == "64.0 MiB"


def test_format_seconds() -> None:
    # swarmheap stats' lifetimes: 0.00105 s read as "0.00105 s"
    assert [format_seconds(s) for s in (0.00001, 0.00105, 0.25, 3.2, 240, 9000)] == [
        "10 µs",
        "1.05 ms",
        "250 ms",
        "3.2 s",
        "4.0 min",
        "2.5 h",
    ]
