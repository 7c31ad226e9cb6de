"""Analysis: the ``fourbit`` command line (`fourbit.analysis.cli`), the main job
(`fourbit.analysis.run`), workloads (`fourbit.analysis.workloads`), sweeps, comparisons, the
ablation, tables, plots, the HTML report and the benchmarks. The public API is `fourbit`'s.
"""
