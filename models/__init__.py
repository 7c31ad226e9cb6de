"""The bit-exact 4-bit training emulator (design.md section 2, ``models/``).

Public API: `models.train` (in `models.train`), the recipes of `models.recipes`, the quantize and
GEMM functions of `models.numerics`, `models.diagnostics.gradient_fidelity`.
"""

import os as _os

# Numba's OpenMP workers spin after each parallel kernel and would steal the two cores from the
# BLAS threads of the next matmul (measured: float32 matmul 1.8 ms alone, 4.8 ms right after a
# Numba kernel). Passive waiting must be set before the OpenMP runtime loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# OpenBLAS's workers spin too (2^28 cycles, ~0.1 s, after a call), and training is faster for it:
# with OPENBLAS_THREAD_TIMEOUT=4 they sleep at once, and a lenet5 int4 step took 40 ms instead of
# 30 ms (its many small BLAS calls wait for the workers to wake). `analysis.bench` times kernels
# against BLAS so that the spinning does not fall on the kernel.

from models.train import Run, TrainConfig, train  # noqa: E402

__all__ = ["Run", "TrainConfig", "train"]
