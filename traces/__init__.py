"""What the hardware is asked to do: number formats, the versioned layer-trace format, importers.

Public API: `traces.read(path) -> Trace`, `Trace.write(path)`, the formats of
`traces.formats`.
"""

from traces.errors import FourbitError, TraceError
from traces.io import Trace, read, write

__all__ = ["FourbitError", "Trace", "TraceError", "read", "write"]
