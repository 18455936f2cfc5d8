"""PNG plots of a bench document: latency and resident memory vs context, RetNet vs its baselines (one line each)."""
from __future__ import annotations

from pathlib import Path

from ..errors import RetNetEdgeError


def write_plots(doc: dict, directory: Path) -> list[Path]:
    """latency_vs_context.png and memory_vs_context.png (one panel per quant mode); returns the paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RetNetEdgeError("--plot needs matplotlib", hint="pip install 'retnet-edge[bench]'") from exc
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    quants = sorted({r["quant"] for r in doc["results"]})
    paths = []
    for key, ylabel, fname in (("ms_per_token_median", "ms per token (median)", "latency_vs_context.png"),
                               ("rss_mb", "resident memory over import (MiB)", "memory_vs_context.png")):
        fig, axes = plt.subplots(1, len(quants), figsize=(5 * len(quants), 4), squeeze=False)
        for ax, quant in zip(axes[0], quants):
            series: dict = {}
            for r in doc["results"]:
                if r["quant"] == quant and r[key] is not None:
                    name = Path(r["artifact"]).name if r["model"] == "retnet" else r["artifact"]
                    who = {"retnet": "RetNet", "transformer": "Transformer-KV"}.get(r["model"], "")
                    label = f"{who} {name} {r['runtime']} {r['threads']}t".strip()
                    series.setdefault(label, []).append((r["context"], r[key]))
            for label, pts in sorted(series.items()):
                pts.sort()
                ax.plot([c for c, _ in pts], [v for _, v in pts], marker="o",
                        linestyle="-" if label.startswith("RetNet") else "--", label=label)
            ax.set_title(f"{quant}")
            ax.set_xlabel("context (tokens already in the state / cache)")
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)  # from zero: flat latency looks flat, noise does not look like a trend
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        m = doc["machine"]
        fig.suptitle(f"{m['cpu']} ({m['cores']} cores, load {m['load_average'][0]})", fontsize=9)
        fig.tight_layout()
        path = directory / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
