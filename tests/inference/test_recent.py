"""The least-recently-used store the worker keeps schedulers and conditionings in."""

from __future__ import annotations

from inference.recent import Recent


def test_recent_keeps_the_last_used_keys() -> None:
    kept: Recent[str] = Recent(2)
    made: list[str] = []

    def make(key: str) -> str:
        made.append(key)
        return key.upper()

    for key in ["a", "b", "a", "c", "a", "b"]:
        assert kept.get(key, lambda key=key: make(key)) == key.upper()
    assert made == ["a", "b", "c", "b"]  # "a" was used again before "c" came, so "b" went first
