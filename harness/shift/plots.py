"""PCA and t-SNE pictures of two feature sets, coloured by domain."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def embedding_pngs(x: np.ndarray, y: np.ndarray, source: Sequence[str], target: Sequence[str], prefix: Path, seed: int = 0) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    data = StandardScaler().fit_transform(np.concatenate([x, y]).astype(np.float64))
    domain = np.r_[np.zeros(len(x)), np.ones(len(y))]
    labels = ("source " + "+".join(source), "target " + "+".join(target))
    pca = PCA(n_components=2, random_state=seed).fit(data)
    perplexity = float(min(30, max(5, (len(data) - 1) // 4)))
    views = {
        "pca": (pca.transform(data), f"PCA ({100 * pca.explained_variance_ratio_.sum():.0f}% of variance)"),
        "tsne": (TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(data), "t-SNE"),
    }
    paths = []
    for name, (emb, title) in views.items():
        fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
        for d, colour in ((0, "tab:blue"), (1, "tab:orange")):
            sel = domain == d
            ax.scatter(emb[sel, 0], emb[sel, 1], s=6, alpha=0.5, c=colour, label=labels[d], linewidths=0)
        ax.set_title(f"{Path(prefix).name} features: {title}")
        ax.set_xlabel("component 1")
        ax.set_ylabel("component 2")
        ax.legend(markerscale=3, loc="best")
        fig.tight_layout()
        path = Path(f"{prefix}-{name}.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
