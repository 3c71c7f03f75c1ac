"""One error type for invalid user input, carrying every problem found (torchtune's ConfigError)."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """Raised once with all validation problems, so a UI can show them together."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


def int_problems(name: str, value: Any, low: int, high: int) -> list[str]:
    """[] when ``value`` is a whole number in [low, high]; else one message naming the field and flag."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        return [
            f"{name} (--{name.replace('_', '-')}): must be a whole number from {low} to {high}, got {value!r}"
        ]
    return []
