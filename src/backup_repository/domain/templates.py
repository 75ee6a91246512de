"""File names of versions and the collection's ``filenameTemplate`` (docs/configuration.md),
both ways: the name a version number gets, and the number a stored name stands for.

Two spellings of a name exist for templates holding ``${version}`` more than once: ours
replaces every occurrence, the reference project (Go ``strings.Replace(..., 1)``) only the
first. Both are recognised when reading names back, so that a bucket written by the
reference can be imported. A name is accepted only when rendering its number gives exactly
that name again: no leading zeros, no version 0, no number too large for the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

VERSION_PLACEHOLDER: Final = "${version}"
# The ``version_number`` column is a 32-bit integer.
MAX_VERSION_NUMBER: Final = 2**31 - 1


class TemplateMismatch(ValueError):
    """A file name that does not stand for a version of the collection; says why."""


@dataclass(frozen=True)
class FilenameTemplate:
    template: str

    def __post_init__(self) -> None:
        if VERSION_PLACEHOLDER not in self.template:
            raise ValueError(f"filename template must contain {VERSION_PLACEHOLDER}")

    def render(self, number: int) -> str:
        """The name this project gives to version ``number``."""
        return self.template.replace(VERSION_PLACEHOLDER, str(number))

    def render_reference(self, number: int) -> str:
        """The name the reference project gives to version ``number``."""
        return self.template.replace(VERSION_PLACEHOLDER, str(number), 1)

    def number_of(self, filename: str) -> int:
        """The version number ``filename`` stands for; raises :class:`TemplateMismatch`."""
        digits = self._digits(filename)
        if digits is None:
            raise TemplateMismatch(f"does not match the filenameTemplate {self.template!r}")
        if len(digits) > 1 and digits.startswith("0"):
            raise TemplateMismatch(
                f"version number {digits!r} has leading zeros (not a name the template gives)"
            )
        number = int(digits)
        if number < 1:
            raise TemplateMismatch("version number 0 is never given (numbers start at 1)")
        if number > MAX_VERSION_NUMBER:
            raise TemplateMismatch(f"version number {digits} is too large")
        if filename not in (self.render(number), self.render_reference(number)):
            raise TemplateMismatch(f"does not match the filenameTemplate {self.template!r}")
        return number

    def _digits(self, filename: str) -> str | None:
        # Ours first: every placeholder the same digits. Then the reference's: the first
        # placeholder digits, the others left as written.
        for pattern in (self._pattern(every=True), self._pattern(every=False)):
            found = pattern.fullmatch(filename)
            if found is not None:
                return found.group("n")
        return None

    def _pattern(self, *, every: bool) -> re.Pattern[str]:
        first, *rest = self.template.split(VERSION_PLACEHOLDER)
        parts = [re.escape(first), r"(?P<n>[0-9]+)"]
        for index, literal in enumerate(rest):
            if index > 0:
                parts.append(r"(?P=n)" if every else re.escape(VERSION_PLACEHOLDER))
            parts.append(re.escape(literal))
        return re.compile("".join(parts), re.DOTALL)
