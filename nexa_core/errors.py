"""One error type for invalid user input, carrying every problem found (torchtune's ConfigError)."""

from __future__ import annotations


class ConfigError(ValueError):
    """Raised once with all validation problems, so a UI can show them together."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)
