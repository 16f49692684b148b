#!/usr/bin/env python3
"""Draws the Grafana dashboard's panels from a Prometheus server's query results into a PNG,
for the README where Grafana itself can't run.

    python3 scripts/dashboard_png.py --prometheus http://127.0.0.1:9090 --minutes 6 \
        --out docs/img/dashboard.png

Every panel of deploy/grafana/dashboards/pagedserve.json becomes one subplot; every target's
expression is sent to /api/v1/query_range with Grafana's variables filled in
($__rate_interval -> --rate-interval, $model_name -> .*). Needs matplotlib (pip).
"""
import argparse
import json
import pathlib
import time
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/grafana/dashboards/pagedserve.json"


def query_range(base, expr, start, end, step):
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as r:
        answer = json.load(r)
    if answer.get("status") != "success":
        raise SystemExit(f"query failed: {expr}: {answer}")
    return answer["data"]["result"]


def legend(fmt, labels):
    out = fmt
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def scale(unit):
    """Axis label and multiplier for a Grafana unit."""
    return {"s": ("ms", 1e3), "percentunit": ("%", 100.0), "reqps": ("req/s", 1.0)}.get(
        unit, ("", 1.0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate-interval", default="30s")
    parser.add_argument("--out", default=str(ROOT / "docs/img/dashboard.png"))
    args = parser.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    end = time.time()
    start = end - args.minutes * 60
    step = max(2, int(args.minutes * 60 / 180))
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(15, 3.0 * rows), dpi=60)
    fig.suptitle(f"{dashboard['title']}: the dashboard's panels from Prometheus "
                 f"(last {args.minutes:g} min)", fontsize=13)
    for ax, panel in zip(axes.flat, panels):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        label, mult = scale(unit)
        for target in panel["targets"]:
            expr = (target["expr"].replace("$__rate_interval", args.rate_interval)
                    .replace("$model_name", ".*"))
            for series in query_range(args.prometheus, expr, start, end, step):
                points = [(float(t) - end, float(v)) for t, v in series["values"]]
                xs = [t / 60 for t, v in points if v == v]  # drop NaN
                ys = [v * mult for t, v in points if v == v]
                name = legend(target.get("legendFormat", ""), series["metric"])
                ax.plot(xs, ys, label=name, linewidth=1.2)
        ax.set_title(panel["title"], fontsize=10)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("minutes", fontsize=8)
    fig.tight_layout()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=60)
    print(f"{out}: {out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
