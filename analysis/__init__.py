"""Analysis: the ``fourbit`` command line, the main job, comparison tables and plots.

Public API: `analysis.main_job` (the main job; `analysis.run.main_job`).
"""

from analysis.run import MainJob, main_job

__all__ = ["MainJob", "main_job"]
