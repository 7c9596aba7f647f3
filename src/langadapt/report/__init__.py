"""The run report: ``write_report`` reads whatever a run has produced, through ``langadapt.layout``
(cleaning report, tokenizer report, bits per character, training metrics, completion markers,
evaluation results; any of them may be missing and is then shown as "not run"), and renders one
self-contained HTML page (``html.py``, charts in ``charts.py``), plus the main table as Markdown
for the terminal (``langadapt.eval.results``).
"""

from __future__ import annotations

from pathlib import Path

from langadapt import stages
from langadapt.files import atomic_path, read_json
from langadapt.layout import RunLayout


def _read(path: Path):
    """JSON content, None when absent, or {"_error": ...} when unreadable (the page says so)."""
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (ValueError, OSError) as e:
        return {"_error": f"{path.name} is unreadable: {e}"}


def collect(run_dir: Path) -> dict:
    """Everything the report shows, read from a run folder; absent parts are None."""
    layout = RunLayout(Path(run_dir))
    status = {s: layout.status(s) for s in stages.ORDER}
    bpc = {s: _read(layout.bpc_path(s)) for s in stages.TRAINING}
    metrics = {s: layout.metrics(s) for s in stages.TRAINING}
    return {
        "run_dir": str(layout.root), "name": layout.root.name,
        "stages": {s: {"status": status[s], "marker": layout.marker(s)} for s in stages.ORDER},
        "clean": _read(layout.report_path("clean")),
        "tokenizer": _read(layout.report_path("tokenizer")),
        "bpc": {k: v for k, v in bpc.items() if v is not None},
        "metrics": {k: v for k, v in metrics.items() if v},
        "results": _read(layout.results_path()),
    }


def write_report(run_dir: Path, out: Path | None = None) -> tuple[Path, str]:
    """Render the run's report to ``out`` (default ``RUN_DIR/report.html``); returns (path, Markdown table)."""
    from langadapt.eval.results import markdown_tables
    from langadapt.report.html import render_html

    run_dir = Path(run_dir)
    data = collect(run_dir)
    out = Path(out) if out else run_dir / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(render_html(data), encoding="utf-8")
    results = data["results"] if isinstance(data.get("results"), dict) and "_error" not in data["results"] else None
    md = markdown_tables(results) if results else "_no evaluation results (the eval stage has not run)_"
    return out, md
