"""Language of a candidate's alt text with gcld3, and the en / multi / nolang category it puts it in."""

from __future__ import annotations

from dataclasses import dataclass

import gcld3

UNDETERMINED = "und"


@dataclass(frozen=True, slots=True)
class Language:
    category: str  # "en" | "multi" | "nolang"
    code: str
    probability: float


class LanguageDetector:
    """gcld3's network on short texts; reliable English → en, reliable other → multi, else nolang."""

    def __init__(self, max_bytes: int = 1000) -> None:
        self._model = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=max_bytes)
        self.calls = 0

    def detect(self, text: str) -> Language:
        self.calls += 1
        result = self._model.FindLanguage(text=text)
        code = result.language or UNDETERMINED
        if not result.is_reliable or code == UNDETERMINED:
            return Language("nolang", code, float(result.probability))
        return Language("en" if code == "en" else "multi", code, float(result.probability))
