"""The bit-exact 4-bit training emulator (design.md section 2, ``models/``).

Public API: `models.train` (in `models.train`), the recipes of `models.recipes`, the quantize and
GEMM functions of `models.numerics`, `models.diagnostics.gradient_fidelity`.
"""

import os as _os

# Numba's OpenMP workers spin after each parallel kernel and would steal the two cores from the
# BLAS threads of the next matmul (measured: float32 matmul 1.8 ms alone, 4.8 ms right after a
# Numba kernel). Passive waiting must be set before the OpenMP runtime loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# OpenBLAS's threads spin after each call the same way (2^n cycles; n = 4 is the minimum); this
# takes effect only when fourbit is imported before numpy, as the ``fourbit`` command does.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from models.train import Run, TrainConfig, train  # noqa: E402

__all__ = ["Run", "TrainConfig", "train"]
