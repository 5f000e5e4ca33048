"""Checks the Grafana dashboard against the metrics Sluice exports; reads files only.

    dashboard.py charts/sluice/files/dashboards/sluice.json worker/src/metrics.rs

Every `sluice_*` series a panel queries must be one the worker registers in metrics.rs (with
the suffixes its type adds: counters `_total`, histograms `_bucket`/`_sum`/`_count`), or one of
OPERATOR_METRICS, which the operator exports. The panels the issue asks for must be there.
"""

import json
import re
import sys

# Exported by the operator, not the worker.
OPERATOR_METRICS = {"sluice_operator_rescale_downtime_seconds"}
REQUIRED_PANELS = ["Throughput in", "Lag", "Checkpoint age (oldest task)", "Checkpoint duration p99", "Rescale downtime"]


def worker_series(source):
    series = set()
    for name, field in re.findall(r'registry\.register\(\s*"(\w+)",\s*"[^"]*",\s*metrics\.(\w+)\.clone\(\)', source):
        kind = re.search(rf"pub {field}: Family<\w+, (\w+)>", source).group(1)
        base = "sluice_" + name
        series |= {"Counter": {base + "_total"}, "Gauge": {base},
                   "Histogram": {base + "_bucket", base + "_sum", base + "_count"}}[kind]
    return series


def main():
    dashboard = json.load(open(sys.argv[1]))
    known = worker_series(open(sys.argv[2]).read()) | OPERATOR_METRICS
    failures = []
    titles = [p["title"] for p in dashboard["panels"]]
    failures += [f"no panel {t!r}" for t in REQUIRED_PANELS if t not in titles]
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for metric in re.findall(r"\bsluice_\w+", target["expr"]):
                queried.add(metric)
                if metric not in known:
                    failures.append(f"panel {panel['title']!r} queries {metric}, which nothing exports")
    print(f"dashboard: {len(titles)} panels, {len(queried)} series queried, {len(known)} known "
          f"({len(known) - len(OPERATOR_METRICS)} from worker/src/metrics.rs); {len(failures)} failures")
    for f in failures:
        print("FAIL " + f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
