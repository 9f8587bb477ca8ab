"""Pictures of a fit (convergence, cluster sizes, a 2-D scatter), of a range of k (the elbow) and of
a scheduled run's drift (sizes before/after, the transition matrix).

Drawn with matplotlib's object API (``matplotlib.figure.Figure``, rendered to PNG by Agg): no
display and no pyplot state, so it is safe in a job, a test or a notebook whatever backend the
user has chosen. Files go to a local path directly, or through Spark's Hadoop FileSystem for any
other URI (hdfs://, s3a://, ...).
"""

from __future__ import annotations

import io as bytes_io

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pyspark.sql import DataFrame

from kmeans_dist import io, kernels, silhouette

DPI = 110
#: the files ``fit_pictures`` writes into its directory
FIT_PICTURES = ("convergence.png", "sizes.png", "scatter.png")


def fit_pictures(model, df: DataFrame, directory: str, seed: int = 0) -> list[str]:
    """convergence.png, sizes.png and scatter.png of ``model`` (fitted on ``df``) in
    ``directory``; returns their paths."""
    paths = [f"{directory}/{name}" for name in FIT_PICTURES]
    convergence(model, paths[0])
    sizes(model, paths[1])
    scatter(model, df, paths[2], seed=seed)
    return paths


def convergence(model, path: str) -> None:
    """Inertia (top) and rows that changed cluster (bottom, symlog) per Lloyd iteration."""
    it = [h["iteration"] for h in model.history]
    fig = Figure(figsize=(7, 5.5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(it, [h["inertia"] for h in model.history], marker="o")
    top.set_ylabel("inertia")
    top.set_title(f"convergence: k={model.k}, {model.n_iter} iterations, stop: {model.stop}")
    bottom.bar(it, [h["moved"] for h in model.history], color="C1")
    bottom.set_yscale("symlog", linthresh=1)
    bottom.set_ylabel("rows moved")
    bottom.set_xlabel("iteration")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    save(fig, path)


def sizes(model, path: str) -> None:
    """Rows per cluster, one bar each, labelled by stable id (counts on the bars when few)."""
    counts = list(model.cluster_sizes or [])
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    bars = ax.bar(range(len(counts)), counts, color=cluster_colors(np.arange(len(counts))))
    if len(counts) <= 30:
        ax.bar_label(bars, fmt="%d")
    every = max(1, len(counts) // 30)  # at most ~30 tick labels
    ax.set_xticks(range(0, len(counts), every), [str(i) for i in model.cluster_ids[::every]])
    ax.set_xlabel("cluster")
    ax.set_ylabel("rows")
    ax.set_title(f"cluster sizes: k={model.k}, {sum(counts)} rows")
    save(fig, path)


def drift(result: dict, path: str) -> None:
    """Rows per stable id before and after (left) and, when entities were followed by key, the
    transition matrix (right); ``result`` as ``kmeans_dist.drift.report`` makes it."""
    moves = result["transitions"]
    fig = Figure(figsize=(13 if moves else 7, 5))
    axes = fig.subplots(1, 2 if moves else 1, squeeze=False)[0]
    ax = axes[0]
    ids = [c["id"] for c in result["clusters"]]
    x = np.arange(len(ids))
    if result["previous"] is None:
        ax.bar(x, [c["rows_after"] for c in result["clusters"]], color="C1", label="this run")
        ax.set_title("rows per cluster (first run: no previous model)")
    else:
        ax.bar(x - 0.2, [c["rows_before"] for c in result["clusters"]], 0.4, color="C0",
               label="previous run")
        ax.bar(x + 0.2, [c["rows_after"] for c in result["clusters"]], 0.4, color="C1",
               label="this run")
        ax.set_title(f"rows per cluster: PSI {result['psi']:.3g}")
    ax.set_xticks(x, [str(i) for i in ids])
    ax.set_xlabel("cluster id")
    ax.set_ylabel("rows")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.15)  # room for the legend above the bars
    ax.legend(loc="upper right", ncol=2)
    if moves:
        transition_matrix(axes[1], moves)
    save(fig, path)


def transition_matrix(ax, moves: dict) -> None:
    """Entities per (previous id, current id) as a heat map, with a row of entities new in this
    batch and a column of those gone from it; counts written in the cells when few."""
    counts = np.array(moves["counts"], dtype=float).reshape(len(moves["previous_ids"]),
                                                            len(moves["current_ids"]))
    table = np.zeros((counts.shape[0] + 1, counts.shape[1] + 1))
    table[:-1, :-1] = counts
    table[:-1, -1] = moves["only_previous_by_id"]
    table[-1, :-1] = moves["only_current_by_id"]
    table[-1, -1] = np.nan  # (new, gone): no such entity
    ax.imshow(table, cmap="Blues")
    if table.size <= 400:
        for (i, j), n in np.ndenumerate(table):
            if not np.isnan(n):
                ax.text(j, i, f"{int(n)}", ha="center", va="center", fontsize=8,
                        color="white" if n > np.nanmax(table) / 2 else "black")
    ax.set_xticks(range(table.shape[1]), [*map(str, moves["current_ids"]), "gone"])
    ax.set_yticks(range(table.shape[0]), [*map(str, moves["previous_ids"]), "new"])
    ax.set_xlabel("cluster id now")
    ax.set_ylabel("cluster id before")
    ax.set_title(f"'{moves['id_col']}': {moves['changed']} of {moves['entities_in_both']} "
                 "changed cluster")


def scatter(model, df: DataFrame, path: str, sample_size: int = 5000, seed: int = 0) -> None:
    """A seeded content-hash sample of ``df``'s rows on its first two principal components,
    coloured by the model's cluster, with the centroids projected and marked."""
    cosine = model.distance == "cosine"
    x = silhouette.sample(df, model.features, sample_size, seed, cosine)
    if len(x) == 0:
        raise ValueError("no valid rows to plot (every row has a null, NaN or infinite feature)")
    labels = model.predict(x)
    points, centres, explained = project(kernels.normalize_rows(x) if cosine else x,
                                         model.centroids)
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    ax.scatter(points[:, 0], points[:, 1], s=8, alpha=0.6, c=cluster_colors(labels),
               linewidths=0)
    ax.scatter(centres[:, 0], centres[:, 1], s=220, marker="X", c=cluster_colors(
        np.arange(model.k)), edgecolors="black", linewidths=1.5, label="centroids")
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of the sample's variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%})")
    ax.set_title(f"k={model.k}: {len(x)} sampled rows on their first two principal components")
    ax.legend(loc="best")
    save(fig, path)


def project(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows and centroids on the first two principal components of the (centred) rows, and the
    share of the rows' variance each component holds (a missing component is all zeros)."""
    mean = x.mean(axis=0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    axes = np.zeros((2, x.shape[1]))
    axes[: min(2, len(vt))] = vt[:2]
    variance = sv**2
    explained = np.zeros(2)
    if variance.sum() > 0:
        explained[: min(2, len(sv))] = (variance / variance.sum())[:2]
    return (x - mean) @ axes.T, (centroids - mean) @ axes.T, explained


def elbow(result: dict, path: str) -> None:
    """Inertia against k with the suggested k marked, and the silhouette on a second axis
    (``result`` as ``kmeans_dist.elbow.summarize`` makes it)."""
    entries = result["entries"]
    ks = [e["k"] for e in entries]
    inertia = [e["inertia"] for e in entries]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    handles = ax.plot(ks, inertia, marker="o", color="C0", label="inertia")
    best = result["suggested_k"]
    if best is not None:
        ax.axvline(best, color="C3", linestyle="--", alpha=0.7)
        handles += ax.plot([best], [inertia[ks.index(best)]], marker="o", markersize=16,
                           markerfacecolor="none", markeredgecolor="C3", linestyle="none",
                           label=f"suggested k={best}")
    ax.set_xlabel("k")
    ax.set_ylabel("inertia", color="C0")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    scored = [(e["k"], e["silhouette"]) for e in entries if e["silhouette"] is not None]
    if scored:
        right = ax.twinx()
        handles += right.plot(*zip(*scored), marker="s", color="C1", label="silhouette")
        right.set_ylabel("silhouette (sample)", color="C1")
    ax.legend(handles=handles, loc="upper right")
    ax.set_title(f"elbow: suggested k={best}" if best is not None else "elbow: no clear knee")
    save(fig, path)


def cluster_colors(labels: np.ndarray) -> np.ndarray:
    """RGBA colours of cluster numbers: tab10 up to 10 clusters, tab20 beyond (then cycling)."""
    labels = np.asarray(labels, dtype=int)
    cmap = colormaps["tab10" if labels.size == 0 or labels.max() < 10 else "tab20"]
    return cmap(labels % cmap.N)


def save(fig: Figure, path: str) -> None:
    """Render ``fig`` as PNG to ``path`` (local or any Hadoop URI)."""
    buf = bytes_io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    io.write_bytes(path, buf.getvalue())
