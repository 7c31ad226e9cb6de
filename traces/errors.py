"""Exceptions shared by every fourbit package.

``traces`` is the one package that every other package imports (design.md section 1), so the
package's base exception lives here. Errors about bad values subclass both `FourbitError` and
`ValueError` (style.md rule 8), so ``except ValueError`` keeps working for callers that do not know
fourbit.
"""

from __future__ import annotations


class FourbitError(Exception):
    """Base class of every error fourbit raises on purpose."""


class FormatError(FourbitError, ValueError):
    """An unknown number format, a bad format parameter, or a value a format cannot hold."""


class TraceError(FourbitError, ValueError):
    """A malformed trace: the message names the table, the column and the row."""


class NumericsError(FourbitError, ValueError):
    """Bad input to a quantizer or GEMM (NaN, wrong shape, int32 overflow, ...)."""


class ConfigError(FourbitError, ValueError):
    """An invalid chip, recipe, sweep or run configuration: names the field and the allowed range."""


class DataError(FourbitError, ValueError):
    """A data set that is missing, unreadable or malformed: names the file and the problem."""


class TrainingError(FourbitError, RuntimeError):
    """Training diverged (NaN or infinite loss) or cannot continue."""


class SimulationError(FourbitError, RuntimeError):
    """The simulation cannot finish: a deadlock, or a block that never completes."""
