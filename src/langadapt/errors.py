"""Errors that are the user's to fix: the CLI prints them as one line, never a traceback."""

from __future__ import annotations


class LangadaptError(Exception):
    """A mistake in the user's input (recipe, file, model name), reported as one line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.message = message
        self.path = path
        self.line = line
        super().__init__(self.where() + message)

    def where(self) -> str:
        if self.path is None:
            return ""
        return f"{self.path}:{self.line}: " if self.line else f"{self.path}: "


class RecipeError(LangadaptError):
    """The recipe is invalid: unknown key, wrong type, impossible value, missing file."""


class ModelNotFoundError(LangadaptError):
    """The base model (or a stage's model) cannot be found."""


class DataError(LangadaptError):
    """An input data file is malformed in a way that cannot be skipped."""


class DivergedError(LangadaptError):
    """Training produced a loss or weights that are NaN or infinite (too high a learning rate, fp16 overflow, ...)."""
