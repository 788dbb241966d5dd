"""PNG plots of layer scores: each criterion's own (the angular heatmap, Gromov et al.'s figure, and min_l d(l, n)
over n; BI per layer) and every criterion's ranking side by side. matplotlib is imported inside (Agg backend, no
display needed)."""

from __future__ import annotations

from pathlib import Path

from .ranking import criteria_in, removal_ranks


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        from ..errors import DepthpruneError

        raise DepthpruneError("plots need matplotlib: pip install 'depthprune[report]' (or pass --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(scores: dict, folder, removed_layers=None) -> list[str]:
    """Write every plot the scores allow into ``folder``; returns the file names written.

    Each criterion in ``scores`` draws its own figures (its registry entry's ``plot``); then one figure ranks the
    layers by every criterion side by side.

    Args:
        removed_layers: layers a plan removed, highlighted where a plot shows layers (None: no plan yet).
    """
    folder = Path(folder)
    plt = _pyplot()
    written = []
    for entry in criteria_in(scores):
        if entry.plot is not None:
            written += entry.plot(plt, scores, folder, removed_layers)
    rankings = removal_ranks(scores)
    if rankings:
        num_layers = int(scores["num_layers"])
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for name, layer_ranks in rankings.items():
            ax.plot(range(num_layers), layer_ranks, marker="o", label=name)
        ax.set_xlabel("layer")
        ax.set_ylabel("rank (1 = removed first)")
        ax.set_title("layer ranking by criterion")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / "rankings.png", dpi=120)
        plt.close(fig)
        written.append("rankings.png")
    return written


def angular_plots(plt, scores: dict, folder: Path, removed_layers=None) -> list[str]:
    """Gromov et al.'s heatmap of d(l, n) over start layer and block size, and min over l of d(l, n) against n."""
    import numpy as np

    num_layers = int(scores["num_layers"])
    table = scores["angular"]
    grid = np.full((num_layers - 1, num_layers), np.nan)        # (block size n - 1, start layer l)
    for n_text, row in table.items():
        grid[int(n_text) - 1, :len(row)] = row
    fig, ax = plt.subplots(figsize=(8, 6))
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis_r",
                      extent=(-0.5, num_layers - 0.5, 0.5, num_layers - 0.5))
    fig.colorbar(image, ax=ax, label="angular distance d(l, n)")
    ax.set_xlabel("start layer l")
    ax.set_ylabel("block size n")
    ax.set_title(f"angular distance between h[l] and h[l+n] ({scores.get('angular_tokens', 'last')} token)")
    fig.tight_layout()
    fig.savefig(folder / "angular_heatmap.png", dpi=120)
    plt.close(fig)

    sizes = sorted(int(n) for n in table)
    minima = [min(table[str(n)]) for n in sizes]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(sizes, minima, marker="o")
    ax.set_xlabel("block size n")
    ax.set_ylabel("min over l of d(l, n)")
    ax.set_title("best block's angular distance")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "angular_min_curve.png", dpi=120)
    plt.close(fig)
    return ["angular_heatmap.png", "angular_min_curve.png"]


def bi_plots(plt, scores: dict, folder: Path, removed_layers=None) -> list[str]:
    """Block Influence per layer (see :func:`bi_bar_plot`)."""
    bi_bar_plot(plt, scores["bi"], folder / "bi.png", removed_layers=removed_layers)
    return ["bi.png"]


def outlier_cap(values, factor: float = 3.0) -> float | None:
    """A y-limit that shows the bulk of ``values``, or None when no value dwarfs the others.

    Block Influence of layer 0 is ~0.99 while the removal candidates lie at 0.02-0.06: on a linear axis they vanish
    into the bottom 5%. Values above ``factor`` x the median of the rest are outliers; the cap is 1.3 x the largest
    value that is not one.
    """
    import numpy as np

    finite = np.asarray([v for v in values if v == v], dtype=float)
    if finite.size < 3:
        return None
    median = float(np.median(finite))
    inliers = finite[finite <= factor * max(median, 1e-12)]
    if inliers.size == finite.size or inliers.size == 0:
        return None
    return float(inliers.max()) * 1.3


def bi_bar_plot(plt, bi: list[float], path, removed_layers=None) -> None:
    """BI per layer; bars above an outlier cap are cut at the cap and labelled with their value."""
    removed = set(removed_layers or [])
    fig, ax = plt.subplots(figsize=(9, 4))
    cap = outlier_cap(bi)
    heights = [min(v, cap) if cap else v for v in bi]
    colors = ["tab:red" if i in removed else "tab:blue" for i in range(len(bi))]
    bars = ax.bar(range(len(bi)), heights, color=colors)
    if cap:
        ax.set_ylim(0, cap * 1.08)
        for index, value in enumerate(bi):
            if value > cap:
                bars[index].set_hatch("//")
                ax.annotate(f"{value:.2f} ↑", (index, heights[index]), ha="center", va="top", fontsize=8,
                            rotation=90, xytext=(0, -4), textcoords="offset points", color="white",
                            bbox={"boxstyle": "round,pad=0.15", "facecolor": "0.2", "edgecolor": "none"})
    if removed:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color="tab:red", label=f"removed ({len(removed)})"), Patch(color="tab:blue",
                                                                                         label="kept")],
                  fontsize="small")
    ax.set_xlabel("layer")
    ax.set_ylabel("Block Influence (1 - cos)")
    title = "Block Influence per layer (low = removable)"
    ax.set_title(title + (" — bars cut at the axis show their value" if cap else ""))
    ax.set_xticks(range(0, len(bi), 2 if len(bi) > 20 else 1))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
