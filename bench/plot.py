"""The plot: latency percentiles and req/s against clients, one line per path, one row per reply partitions per
reader. ``python -m bench.plot bench/results/latest.json out.png`` redraws it from a run's JSON."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

COLORS = {"floor": "#7f7f7f", "baseline": "#1f77b4", "gateway": "#d62728", "gateway-rd": "#ff7f0e",
          "ceiling": "#2ca02c"}
LABELS = {"floor": "floor (kafka-python, no HTTP)", "baseline": "baseline (aiohttp + aiokafka)",
          "gateway": "gateway (gunicorn, 2 gevent workers)", "gateway-rd": "gateway, kafka.client = librdkafka",
          "ceiling": "ceiling (Flask constant, no Kafka)"}


def plot(cells: list[dict[str, Any]], out: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pprs = sorted({c["ppr"] for c in cells if c["ppr"]}) or [0]
    fig, axes = plt.subplots(len(pprs), 2, figsize=(12, 4.2 * len(pprs)), squeeze=False)
    for row, ppr in enumerate(pprs):
        lat, rps = axes[row]
        for path, color in COLORS.items():
            mine = sorted((c for c in cells if c["path"] == path and c["ppr"] in (ppr, 0)), key=lambda c: c["clients"])
            if not mine:
                continue
            x = [c["clients"] for c in mine]
            lat.plot(x, [c["p50_ms"] for c in mine], "o-", color=color, label=f"{LABELS[path]} p50")
            lat.plot(x, [c["p99_ms"] for c in mine], "^--", color=color, alpha=0.6, label="p99")
            rps.plot(x, [c["rps"] for c in mine], "o-", color=color, label=LABELS[path])
        where = f"{ppr} reply partition{'s' if ppr > 1 else ''} per reader" if ppr else ""
        for ax, what in ((lat, "latency, ms (p50 solid, p99 dashed)"), (rps, "requests per second")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("concurrent clients (keep-alive connections / requests in flight)")
            ax.set_ylabel(what)
            ax.set_title(f"{what.split(',')[0].split(' (')[0]} — {where}" if where else what)
            ax.grid(True, which="both", alpha=0.3)
            ticks = sorted({c["clients"] for c in cells})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        rps.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(textwrap.fill(title, 150), fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str]) -> int:
    data = json.loads(Path(argv[0]).read_text())
    plot(data["cells"], Path(argv[1]), data.get("title", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
