"""How sizes, durations and times read on the pages and in ``dicom-node status``."""

from __future__ import annotations

import datetime

__all__ = ["human_duration", "human_size", "human_time"]


def human_time(value: datetime.datetime | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS`` in UTC; ``-`` for none.

    Examples
    --------
    >>> human_time(datetime.datetime(2026, 1, 2, 3, 4, 5))
    '2026-01-02 03:04:05'
    """
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def human_size(value: int | None) -> str:
    """Bytes in binary units.

    Examples
    --------
    >>> human_size(512)
    '512 B'
    >>> human_size(3 * 1024**3)
    '3.0 GiB'
    """
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(amount) < 1024:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def human_duration(seconds: float | None) -> str:
    """Seconds as ms, s, min or h, whichever reads best.

    Examples
    --------
    >>> human_duration(0.25)
    '250 ms'
    >>> human_duration(75)
    '1 min 15 s'
    """
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
