"""Register traffic of a systolic array: the bits latched into PE registers per dataflow.

A value costs register energy (``reg.bit`` of `fourbit.hwsim.energy`, per bit latched) each time
a PE latches it: once per hop between neighbouring PEs, and once when it is loaded into the PE
that keeps it. A value that stays in a PE costs nothing more. The array is R x C, each PE reduces
p products per cycle (p lanes along K), and the GEMM is a (M x K) times b (K x N) in the folds of
`fourbit.hwsim.mapping` (a fold uses k <= p*R of K and n <= C of N, or m <= R of M in ``os``).
Values enter at the left edge (streamed operands) and the top edge (stationary loads, the other
``os`` operand); partial sums and outputs leave at the bottom edge, where the ofmap buffer is.

``ws`` (b stationary, K along rows, N along columns), per fold:
    streamed a: each of the M x k values moves right through the n columns of the fold and is
    latched in each: M * k * n latches of a_bits (summed over folds: one per MAC);
    partial sums: each of the M x n partial sums is forwarded down through all R rows (unused
    rows of a partial K-fold forward it too) to the bottom edge: M * n * R latches of psum bits;
    stationary b: shifted down from the top edge in R cycles, the value of row r (0-based) is
    latched in r + 1 PEs: n * sum_r (r + 1) * min(p, k - r*p) latches of b_bits, once per fold
    (once per tile for a tile-major order, which reloads them: ``reloads``).
``is``: ``ws`` of the transposed product (b streams, a^T stationary; M and N swap).
``os`` (outputs stationary, M along rows, N along columns), per fold of m x n outputs:
    a moves right through the n columns, b down through the m rows: M-fold and N-fold shares
    make one latch per MAC each (a_bits and b_bits); each PE writes its accumulator once per
    cycle of ceil(K/p) (psum bits); at the end the outputs shift down to the bottom edge, the
    output of row r through R - r registers: n * (m*R - m*(m-1)/2) latches of psum bits.

These are data-movement rules of the standard systolic array (Kung, 1982; the fold model of
SCALE-Sim, Samajdar et al., ISPASS 2020); padding lanes are clock-gated and cost nothing, except
the forwarding of partial sums through the unused rows of a ``ws``/``is`` fold, which the
column's shift chain cannot skip.
"""

from __future__ import annotations

__all__ = ["register_latches"]


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _fold_lengths(total: int, size: int) -> list[tuple[int, int]]:
    """(length, how many folds of it) of ``total`` cut into folds of at most ``size``."""
    full, rest = divmod(total, size)
    return [(size, full)] * (full > 0) + [(rest, 1)] * (rest > 0)


def _load_latches(k: int, p: int) -> int:
    """Latches to shift a column's k stationary values (p per PE) down from the top edge: the
    value of row r is latched in r + 1 PEs."""
    return sum((r + 1) * min(p, k - r * p) for r in range(_ceil(k, p)))


def register_latches(M: int, N: int, K: int, rows: int, cols: int, p: int, dataflow: str,
                     reloads: int = 1) -> dict[str, int]:
    """Register latches of one GEMM (one group) by what is latched (see the module docstring):
    ``a`` and ``b`` (operand values, latched at a_bits and b_bits) and ``psum`` (partial sums and
    outputs, latched at the accumulator's width). ``reloads``: how many times each stationary
    fold is loaded (the tiles per fold of a tile-major order; 1 for ``n-k-m``). Python integers.

    Raises ValueError for a dataflow other than ``ws``, ``is``, ``os``.
    """
    if dataflow == "is":
        out = register_latches(N, M, K, rows, cols, p, "ws", reloads)
        return {"a": out["b"], "b": out["a"], "psum": out["psum"]}
    if dataflow == "ws":
        k_folds = _ceil(K, p * rows)
        return {"a": M * K * N,
                "psum": M * N * k_folds * rows,
                "b": N * reloads * sum(_load_latches(k, p) * n for k, n in _fold_lengths(K, p * rows))}
    if dataflow == "os":
        drain = sum(count * (m * rows - m * (m - 1) // 2) for m, count in _fold_lengths(M, rows))
        return {"a": M * K * N, "b": M * K * N, "psum": M * N * _ceil(K, p) + N * drain}
    raise ValueError(f"dataflow = {dataflow!r} is out of range: allowed ('ws', 'is', 'os')")
