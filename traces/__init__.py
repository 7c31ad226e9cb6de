"""What the hardware is asked to do: number formats, the versioned trace format, importers, and
the base every other subpackage builds on (errors, strict configs, atomic writes).

Modules: `fourbit.traces.formats` (number formats, accumulators), `fourbit.traces.schema` and
`fourbit.traces.io` (the trace: ``read(path) -> Trace``, ``Trace.write``),
`fourbit.traces.lowering` (layers to GEMMs), `fourbit.traces.scalesim` (SCALE-Sim topologies),
`fourbit.traces.errors`, `fourbit.traces.config` (strict configuration models),
`fourbit.traces.files` (atomic writes). The public API is `fourbit`'s.
"""
