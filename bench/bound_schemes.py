"""Which per-row bounds prune most: Hamerly's one lower bound against Yinyang's grouped ones.

A simulation in exact arithmetic (numpy, every distance computed, no margins, no timing), on the
pruned-Lloyd benchmark's data: for each Lloyd pass, the fraction of rows whose bounds fail to
settle them (so a pruned pass would compute all their distances) when each row keeps an upper
bound and t lower bounds, one per group of centroids (t = 1 is Hamerly's scheme; the groups are
a k-means of the starting centroids, as Yinyang groups them; every group's bound drops by its
own centroids' largest move; the separation bound 2 s(a) - u applies to all). A row that is not
settled gets exact bounds again, as a recomputed row does.

    python bench/bound_schemes.py 1Mx32-k128 8 1 4 8 16

prints the fraction per pass (the first 15, then every 20th) and the mean over the run for each
t. Run by hand, not by ``make bench`` (it computes every distance of every pass several times).
"""

from __future__ import annotations

import sys

import numpy as np

import pruned


def distances(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    d2 = (x ** 2).sum(1)[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None]
    return np.sqrt(np.maximum(d2, 0))


def groups(c: np.ndarray, t: int) -> np.ndarray:
    """(k,) the group of each centroid: ten Lloyd passes over the centroids, from the first t."""
    if t == 1:
        return np.zeros(len(c), dtype=int)
    g_c = c[:t].copy()
    for _ in range(10):
        g = np.argmin(((c[:, None] - g_c[None]) ** 2).sum(-1), 1)
        for j in range(t):
            if (g == j).any():
                g_c[j] = c[g == j].mean(0)
    return g


def data(key: str, divisor: int) -> tuple[np.ndarray, np.ndarray]:
    """The workload's kind of rows (n / divisor of them, numpy-generated) and k sampled rows."""
    w = pruned.find(key)
    n = w.n // divisor
    rng = np.random.default_rng(1)
    if w.kind == "uniform":
        x = rng.uniform(-10, 10, size=(n, w.d))
    else:
        centres = np.random.default_rng(0).uniform(-w.spread, w.spread, size=(w.centres, w.d))
        x = centres[np.arange(n) % w.centres] + w.std * rng.standard_normal((n, w.d))
    return x, x[rng.choice(n, w.k, replace=False)].copy()


def main(argv: list[str]) -> int:
    key, divisor, ts = argv[0], int(argv[1]), [int(t) for t in argv[2:]] or [1, 4, 8, 16]
    x, c = data(key, divisor)
    n, k = len(x), len(c)
    dist = distances(x, c)
    lab = dist.argmin(1)
    rows = np.arange(n)
    state = {}
    for t in ts:
        g = groups(c, t)
        others = dist.copy()
        others[rows, lab] = np.inf
        state[t] = (g, np.stack([others[:, g == j].min(1) for j in range(t)], axis=1))
    total, it = {t: 0.0 for t in ts}, 0
    while True:
        it += 1
        sums = np.zeros_like(c)
        np.add.at(sums, lab, x)
        counts = np.bincount(lab, minlength=k)
        new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
        move, c = np.sqrt(((new - c) ** 2).sum(1)), new
        dist = distances(x, c)
        new_lab = dist.argmin(1)
        upper = dist[rows, lab]
        others = dist.copy()
        others[rows, new_lab] = np.inf
        cc = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
        np.fill_diagonal(cc, np.inf)
        half = cc.min(1) / 2
        line = []
        for t in ts:
            g, lower = state[t]
            drop = np.array([move[g == j].max() if (g == j).any() else 0.0 for j in range(t)])
            lower = lower - drop[None, :]
            unsettled = ~(np.maximum(lower.min(1), 2 * half[lab] - upper) > upper)
            for j in range(t):
                lower[unsettled, j] = others[unsettled][:, g == j].min(1)
            state[t] = (g, lower)
            total[t] += unsettled.mean()
            line.append(f"t={t}: {100 * unsettled.mean():5.1f}%")
        changed = int((new_lab != lab).sum())
        lab = new_lab
        if it <= 15 or it % 20 == 0:
            print(f"pass {it:3d}, {changed:6d} rows moved: " + "  ".join(line), flush=True)
        if changed == 0:
            break
    print(f"{it} passes; rows unsettled, mean over the passes: "
          + ", ".join(f"t={t}: {100 * total[t] / it:.1f}%" for t in ts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
