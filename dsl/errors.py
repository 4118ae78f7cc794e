"""SpecError: every problem with a spec, reported at a file, line and column with a caret."""
from __future__ import annotations

import difflib
from typing import Iterable


class SpecError(Exception):
    exit_code = 2

    def __init__(self, message: str, file: str = "<spec>", line: int = 0, column: int = 0,
                 source: str | None = None, hint: str | None = None):
        self.message, self.file, self.line, self.column = message, file, line, column
        self.source, self.hint = source, hint
        super().__init__(self.render())

    @classmethod
    def at(cls, pos, message: str, hint: str | None = None, source: str | None = None) -> "SpecError":
        return cls(message, pos.file, pos.line, pos.column, source or _SOURCES.get(pos.file), hint)

    def render(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line > 0 else self.file  # a whole-file error
        lines = [f"{where}: error: {self.message}"]
        excerpt = _excerpt(self.source, self.line, self.column)
        if excerpt:
            lines.append(excerpt)
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


# Source text by file name, so any stage can quote the line an error points at.
_SOURCES: dict[str, str] = {}


def remember_source(file: str, text: str) -> None:
    _SOURCES[file] = text


def source_line(file: str, line: int) -> str:
    """Line `line` (1-based) of a remembered spec, or "" when unknown."""
    rows = _lines(_SOURCES.get(file, ""))
    return rows[line - 1] if 0 < line <= len(rows) else ""


def _lines(source: str) -> list[str]:
    """Lines as the parser counts them: only \n ends one (splitlines would also split at \r, \x0c,
    U+2028, ..., and quote the wrong line)."""
    return [row.removesuffix("\r") for row in source.split("\n")]


def _excerpt(source: str | None, line: int, column: int) -> str:
    if not source or line < 1:
        return ""
    rows = _lines(source)
    if line > len(rows):
        return ""
    gutter = f"{line:>4} | "
    return f"{gutter}{rows[line - 1]}\n{' ' * (len(gutter) - 2)}| {' ' * max(column - 1, 0)}^"


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None
