"""PNG plots of layer scores: the angular heatmap (Gromov et al.'s figure), min_l d(l, n) over n, BI per layer, and
every criterion's ranking side by side. matplotlib is imported inside (Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        from ..errors import DepthpruneError

        raise DepthpruneError("plots need matplotlib: pip install 'depthprune[report]' (or pass --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(scores: dict, folder) -> list[str]:
    """Write every plot the scores allow into ``folder``; returns the file names written."""
    folder = Path(folder)
    plt = _pyplot()
    num_layers = int(scores["num_layers"])
    written = []
    if "angular" in scores:
        import numpy as np

        grid = np.full((num_layers - 1, num_layers), np.nan)        # (block size n - 1, start layer l)
        for n_text, row in scores["angular"].items():
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
        written.append("angular_heatmap.png")

        sizes = sorted(int(n) for n in scores["angular"])
        minima = [min(scores["angular"][str(n)]) for n in sizes]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(sizes, minima, marker="o")
        ax.set_xlabel("block size n")
        ax.set_ylabel("min over l of d(l, n)")
        ax.set_title("best block's angular distance")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / "angular_min_curve.png", dpi=120)
        plt.close(fig)
        written.append("angular_min_curve.png")
    if "bi" in scores:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.bar(range(num_layers), scores["bi"])
        ax.set_xlabel("layer")
        ax.set_ylabel("Block Influence (1 - cos)")
        ax.set_title("Block Influence per layer (low = removable)")
        fig.tight_layout()
        fig.savefig(folder / "bi.png", dpi=120)
        plt.close(fig)
        written.append("bi.png")
    rankings = _rankings(scores)
    if rankings:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for name, ranks in rankings.items():
            ax.plot(range(num_layers), ranks, marker="o", label=name)
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


def _rankings(scores: dict) -> dict[str, list[float]]:
    from .api import _ranks

    num_layers = int(scores["num_layers"])
    rankings = {}
    if "angular" in scores:
        rankings["angular d(l,1)"] = _ranks(list(scores["angular"]["1"])[:num_layers])
    for name in ("bi", "ppl", "taylor", "magnitude"):
        if name in scores:
            rankings[name] = _ranks(list(scores[name]))
    if "sleb" in scores:
        order = {layer: i + 1 for i, layer in enumerate(scores["sleb"])}
        rankings["sleb order"] = [order.get(layer, float("nan")) for layer in range(num_layers)]
    return rankings
