"""What model code raises, in a module that imports nothing heavy.

The service turns each of these into an error for the one client that asked; it must be able to
name them without importing torch (which models load on first use), so they live apart from the
code that raises them. Their bases stay what callers already catch: a refused input is a
ValueError, an unknown name a KeyError, a failed load a RuntimeError.
"""

from __future__ import annotations


class TooManyTokensError(ValueError):
    """The prompt tokenizes to more tokens than the model (or the server) accepts."""


class UnsupportedModelError(ValueError):
    """The model's attention cannot be captured; the message says why."""


class ModelLoadError(RuntimeError):
    """A registered model could not be loaded; the message says what to install or fix."""


class UnknownModelError(KeyError):
    """A model name that is neither registered nor allowed, or whose entry points at nothing installed."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else "unknown model"
