"""The bit-exact 4-bit training emulator.

Modules: `fourbit.models.trainer` (``train(model, dataset, recipe, ...) -> Run``, `TrainConfig`),
`fourbit.models.recipes`, `fourbit.models.quantizers`, `fourbit.models.numerics` (the public
quantize and GEMM functions over the private Numba kernels of `fourbit.models._kernels`),
`fourbit.models.layers`, `fourbit.models.zoo`, `fourbit.models.data`,
`fourbit.models.recorder`, `fourbit.models.diagnostics`. The public API is `fourbit`'s.
"""
