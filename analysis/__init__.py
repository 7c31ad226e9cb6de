"""Analysis: the ``fourbit`` command line, the main job, sweeps, comparison tables and plots.

Public API: `analysis.run.main_job` (the main job).
"""
