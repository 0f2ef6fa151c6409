"""Human sizes: "1 GiB", "512MiB", "64 MB", "4k" in; "64.0 MiB" out."""

from __future__ import annotations

import re

__all__ = ["class_label", "format_size", "mix_label", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_LIMIT = 2**63
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(size: int | str, *, what: str = "size") -> int:
    """Bytes from an int or a human string. Decimal units (kB, MB, GB) are powers
    of 1000, binary ones (KiB, MiB, GiB) and bare letters (k, M, G) of 1024."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(f"{what} must be an int or a string like '64 MiB', not {type(size).__name__}")
    if isinstance(size, int):
        if size < 0:
            raise ValueError(f"{what} must not be negative (got {size})")
        if size >= _LIMIT:
            raise ValueError(f"{what} {size} is beyond any heap (sizes are below 2**63 bytes)")
        return size
    match = _PATTERN.match(size)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(
            f"cannot read {what} {size!r}: write a number and a unit, e.g. '64 MiB', '1 GiB', '512MB'"
        )
    n = int(float(match.group(1)) * _UNITS[unit])
    if n >= _LIMIT:
        raise ValueError(f"{what} {size!r} is beyond any heap (sizes are below 2**63 bytes)")
    return n


def format_size(n: int) -> str:
    """'512 B', '1.5 KiB', '64.0 MiB'."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_seconds(seconds: float) -> str:
    """'850 µs', '12.5 ms', '3.20 s', '4.0 min', '2.5 h': a duration in the unit it reads best in."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def class_label(size: int) -> str:
    """A key of a block-size mix (Prediction.mix, an agent's "classes"): a block size, or 0 for page runs."""
    return format_size(size) if size else "page runs"


def mix_label(mix: dict[int, float], n: int = 3) -> str:
    """The ``n`` largest classes of a block-size mix ({size: share}, largest first), as "3.0 KiB 95%, ..."."""
    return ", ".join(f"{class_label(size)} {share:.0%}" for size, share in list(mix.items())[:n])
