"""Analysis: the ``fourbit`` command line, the main job, comparison tables and plots.

Public API: `analysis.main_job` (the main job; `analysis.run.main_job`).
"""

import os as _os

# Before the OpenMP runtime loads (this package is the first the ``fourbit`` command imports):
# Numba's OpenMP workers sleep after a kernel instead of spinning (models/__init__.py).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from analysis.run import MainJob, main_job  # noqa: E402

__all__ = ["MainJob", "main_job"]
