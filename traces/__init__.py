"""What the hardware is asked to do: number formats, the versioned layer-trace format, importers.

Public API: `traces.read(path) -> Trace`, `Trace.write(path)`, the formats of
`traces.formats`, `traces.import_scalesim`.
"""
