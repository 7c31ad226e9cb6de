"""Analysis: the ``fourbit`` command line, the main job, comparison tables and plots.

Public API: `analysis.main_job` (the main job; `analysis.run.main_job`).
"""

import os as _os

# Before numpy loads (this package is the first the ``fourbit`` command imports): OpenBLAS's
# worker threads, and Numba's OpenMP workers, must sleep after a call instead of spinning, or on
# two cores they hold one while the other library's next call runs (models/__init__.py).
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from analysis.run import MainJob, main_job  # noqa: E402

__all__ = ["MainJob", "main_job"]
