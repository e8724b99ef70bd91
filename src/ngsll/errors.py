"""Named exceptions raised at the library's boundary.

Every error a user can cause (bad input, bad configuration, bad data source) is a subclass of
:class:`NGSLLError`, so callers can catch one base class; each message says what was wrong and what is
accepted.
"""

from __future__ import annotations


class NGSLLError(Exception):
    """Base class of every error the ngsll package raises on purpose."""


class ConfigError(NGSLLError, ValueError):
    """A parameter or configuration value is outside what is accepted (e.g. K <= 0, K > d)."""


class InputError(NGSLLError, ValueError):
    """An input tensor or array has the wrong shape, dtype or non-finite values."""


class DataSourceError(NGSLLError):
    """A dataset source is unknown, missing or unreadable."""


class IntegrityError(DataSourceError):
    """A downloaded or local file does not match its expected hash or is corrupted."""
