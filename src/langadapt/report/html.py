"""The run report's page: one self-contained HTML document (inline CSS and SVG, no scripts or fonts from
the network), built from what ``langadapt.report.collect`` read of a run."""

from __future__ import annotations

import html
import json
import math
import time

from langadapt import stages
from langadapt.eval.results import HARNESS_PREFIX, category_table, classification_table, fmt, harness_table, lang_name, main_table, protocol_table
from langadapt.report.charts import _downsample, _in_sequence, svg_line_chart

CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#d8dee6;--bg:#fff;--head:#f3f6f9;--best:#0b5394}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Vazirmatn",Tahoma,sans-serif;
color:var(--fg);background:var(--bg);margin:0 auto;max-width:1180px;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}section{overflow-x:auto}p.meta{color:var(--muted);margin:0}nav a{margin-right:12px;color:var(--best)}
table{border-collapse:collapse;margin:8px 0 4px;font-variant-numeric:tabular-nums}
th,td{border:1px solid var(--line);padding:4px 8px;text-align:right;vertical-align:top}
th{background:var(--head);font-weight:600}td.name,th.name{text-align:left}td.best{font-weight:700;color:var(--best)}
td.dash{color:var(--muted)}td.na{color:#9aa5b1}tr.avg td{background:#fafbfc;font-weight:600}tr.group td{background:var(--head);text-align:left;font-style:italic}
.not-run{color:var(--muted);font-style:italic}.note{color:var(--muted);font-size:12.5px}
.charts{display:flex;flex-wrap:wrap;gap:12px}svg.chart{border:1px solid var(--line);border-radius:4px;background:#fff}
svg .grid{stroke:#eceff3}svg .axis{stroke:#8a94a3}svg .tick{font-size:11px;fill:#5f6b7a}svg .lab{font-size:12px;fill:#1d2330}
svg .ct{font-size:13px;font-weight:600;fill:#1d2330}svg .leg{font-size:11.5px;fill:#1d2330}
summary{cursor:pointer;margin:14px 0 4px;font-weight:600}pre{background:var(--head);padding:8px;overflow:auto;font-size:12px}.status-complete{color:#1a7f37}.status-partial{color:#b35900}
.status-not{color:var(--muted)}td.nowrap{white-space:nowrap}
"""


def _e(v) -> str:
    return html.escape(str(v))


def _num(v, digits: int = 2) -> str:
    if isinstance(v, bool) or v is None:
        return _e(v) if v is not None else ""
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}" if abs(v) >= 0.01 or v == 0 else f"{v:.3g}"
    return _e(v)


def _not_run(what: str) -> str:
    return f'<p class="not-run">{_e(what)}: not run.</p>'


def _generic(obj, depth: int = 0) -> str:
    """Any JSON value as nested key/value tables (for report parts whose shape may change)."""
    if isinstance(obj, dict):
        if obj and all(isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values()) for v in obj.values()):
            cols = list(dict.fromkeys(k for v in obj.values() for k in v))
            head = "".join(f"<th>{_e(c)}</th>" for c in cols)
            body = "".join(f'<tr><td class="name">{_e(k)}</td>' + "".join(f"<td>{_num(v.get(c), 3)}</td>" for c in cols) + "</tr>"
                           for k, v in obj.items())
            return f'<table><tr><th class="name"></th>{head}</tr>{body}</table>'
        rows = []
        for k, v in obj.items():
            inner = _generic(v, depth + 1) if isinstance(v, (dict, list)) else _num(v, 3)
            rows.append(f'<tr><td class="name">{_e(k)}</td><td class="name">{inner}</td></tr>')
        return f"<table>{''.join(rows)}</table>"
    if isinstance(obj, list):
        if obj and all(isinstance(x, dict) for x in obj):
            cols = list(dict.fromkeys(k for x in obj for k in x))
            head = "".join(f"<th>{_e(c)}</th>" for c in cols)
            body = "".join("<tr>" + "".join(
                f"<td>{_generic(x.get(c), depth + 1) if isinstance(x.get(c), (dict, list)) else _num(x.get(c), 3)}</td>"
                for c in cols) + "</tr>" for x in obj[:200])
            return f"<table><tr>{head}</tr>{body}</table>"
        return _e(", ".join(str(x) for x in obj[:50]))
    return _num(obj, 3)


def _section_stages(data: dict) -> str:
    rows = []
    for s, info in data["stages"].items():
        m = info["marker"] or {}
        summary = m.get("summary") if isinstance(m.get("summary"), dict) else {}
        brief = "; ".join(f"{k}: {v}" for k, v in summary.items()
                          if not isinstance(v, (dict, list)) and k not in ("peak_rss_mb", "written_mb"))[:300]
        cls = {"complete": "status-complete", "partial": "status-partial"}.get(info["status"], "status-not")
        rows.append(f'<tr><td class="name">{s}</td><td class="name {cls}">{info["status"]}</td>'
                    f'<td class="nowrap">{_e(str(m.get("finished_at", "")).replace("T", " ")[:16])}</td><td>{_num(m.get("seconds"), 1)}</td>'
                    f'<td>{_num(summary.get("peak_rss_mb"), 0)}</td><td>{_num(summary.get("written_mb"), 0)}</td>'
                    f'<td class="name" dir="auto">{_e(brief)}</td></tr>')
    return ('<section id="stages"><h2>Pipeline</h2><table><tr><th class="name">stage</th><th class="name">status</th>'
            '<th>finished</th><th>seconds</th><th>peak memory MB</th><th>written MB</th><th class="name">summary</th></tr>'
            + "".join(rows) + "</table></section>")


def _cell_td(c: dict, digits: int = 2) -> str:
    if c.get("dash"):
        return '<td class="dash" title="most answers did not follow the instruction">-</td>'
    if c.get("value") is None:
        return '<td class="na" title="not evaluated">n/a</td>'
    return f'<td class="{"best" if c.get("best") else ""}">{c["value"]:.{digits}f}</td>'


def _section_harness(results: dict) -> str:
    """The lm-evaluation-harness tasks: their own table beside the paper's (lm-eval's metrics and prompts)."""
    t = harness_table(results)
    if t is None:
        return ""
    head = "".join(f"<th>{_e(m)}</th>" for m in t["models"])
    body = []
    for r in t["rows"]:
        tds = []
        for c in r["cells"]:
            if c["value"] is None:
                tds.append('<td class="na" title="not evaluated">n/a</td>')
                continue
            err = f' <span class="note">±{c["stderr"]:.3f}</span>' if c["stderr"] is not None else ""
            tds.append(f'<td class="{"best" if c.get("best") else ""}">{c["value"]:.3f}{err}</td>')
        arrow = {True: " ↑", False: " ↓"}.get(r["higher_is_better"], "")
        name = (f'&nbsp;&nbsp;{_e(r["task"])}' if r["part_of"] else _e(r["task"]))
        body.append(f'<tr><td class="name">{name}</td><td class="name">{_e(r["language"])}</td>'
                    f'<td class="name">{_e(r["metric"])}{arrow}</td><td>{_num(r["n"])}</td>{"".join(tds)}</tr>')
    return ('<h3 id="lm-eval">lm-evaluation-harness tasks</h3><table><tr><th class="name">task</th>'
            f'<th class="name">language</th><th class="name">metric</th><th>n</th>{head}</tr>{"".join(body)}</table>'
            '<p class="note">Scored by lm-evaluation-harness (eval.tasks entries lm_eval:&lt;task&gt;) with its own '
            'prompts and metrics, ± its standard error; not part of the averages above. Language: identified from '
            'the task\'s prompts. Best model of each row in bold.</p>')


def _section_classification(results: dict) -> str:
    """Accuracy's companions for each classification task: macro-F1 and the majority shares."""
    rows = classification_table(results)
    if not rows:
        return ""
    body = "".join(
        f'<tr><td class="name">{_e(r["task"])}</td><td class="name">{_e(r["model"])}</td><td>{_num(r["n"])}</td>'
        + "".join(f"<td>{'' if r[k] is None else f'{r[k]:.3f}'}</td>"
                  for k in ("accuracy", "macro_f1", "majority_gold", "majority_predicted")) + "</tr>"
        for r in rows)
    return ('<h3 id="classification">Classification beyond accuracy</h3><table><tr><th class="name">task</th>'
            '<th class="name">model</th><th>n</th><th>accuracy</th><th>macro-F1</th><th>majority label (gold)</th>'
            f'<th>most common answer</th></tr>{body}</table><p class="note">Macro-F1 averages F1 over the gold labels, '
            'each weighing the same. Majority label: the share of the most common gold label (what answering it always '
            'scores). Most common answer: the share of the model\'s most frequent answer; near 1 means one label for '
            'nearly every example, whatever the accuracy.</p>')


def _section_tasks(results: dict | None) -> str:
    if not results or "_error" in results:
        return '<section id="tasks"><h2>Task scores</h2>' + _not_run("Evaluation") + "</section>"
    blocks = main_table(results)
    if not blocks:
        harness = _section_harness(results)
        return '<section id="tasks"><h2>Task scores</h2>' + (harness or _not_run("Evaluation")) + "</section>"
    # One table, blocks side by side, rows = the union of task titles in family order (Table 5).
    titles: list[str] = []
    for b in blocks:
        for r in b["rows"]:
            key = r["title"].split(" (")[0]
            if key not in titles:
                titles.append(key)
    order = [t for t in titles if not t.startswith(("Avg.", "Held-out"))] + \
            [t for t in titles if t.startswith("Avg.")] + [t for t in titles if t.startswith("Held-out")]
    head1 = '<tr><th class="name" rowspan="2">Task</th>' + "".join(
        f'<th colspan="{len(b["models"]) + 1}">{_e(b["name"])}</th>' for b in blocks) + "</tr>"
    head2 = "<tr>" + "".join("<th>Random</th>" + "".join(f"<th>{_e(m)}</th>" for m in b["models"]) for b in blocks) + "</tr>"
    body = []
    for title in order:
        star = any(r["star"] for b in blocks for r in b["rows"] if r["title"].split(" (")[0] == title)
        cls = ' class="avg"' if title.startswith(("Avg.", "Held-out")) else ""
        tds = []
        for b in blocks:
            r = next((r for r in b["rows"] if r["title"].split(" (")[0] == title), None)
            if r is None:
                tds.append('<td class="na"></td>' * (len(b["models"]) + 1))
                continue
            digits = 3 if r["kind"] == "bpc" else 2
            tds.append(f'<td>{fmt(r["random"]) if r["random"] is not None else "-"}</td>' +
                       "".join(_cell_td(c, digits) for c in r["cells"]))
        body.append(f'<tr{cls}><td class="name">{"*" if star else ""}{_e(title)}</td>{"".join(tds)}</tr>')
    directions = "; ".join(f'{b["name"]}: {r["title"]}' for b in blocks for r in b["rows"] if "→" in r["title"])
    note = ("Accuracy for classification tasks; BLEU/100 (sacrebleu) for generation tasks, as the paper prints them. "
            "* = held out of instruction tuning (unseen). - = most answers did not follow the instruction (counted "
            "as 0 in the averages). n/a = not evaluated. Best model of each row in bold. "
            f"Translation directions: {directions}.")
    return (f'<section id="tasks"><h2>Task scores (paper Table 5 layout)</h2><table class="main">{head1}{head2}'
            f'{"".join(body)}</table><p class="note">{_e(note)}</p>{_section_classification(results)}'
            f'{_section_harness(results)}{_section_details(results)}</section>')


def _section_details(results: dict) -> str:
    rows = [r for r in results.get("rows", []) if r["model"] != "random" and r["metric"] != "bpc"
            and not str(r["task"]).startswith(HARNESS_PREFIX)]  # those have their own table
    if not rows:
        return ""
    by: dict[tuple, dict] = {}
    for r in rows:
        by.setdefault((r["model"], r["language"], r["task"], r.get("protocol", "original")), {})[r["metric"]] = r
    metrics = ["accuracy", "accuracy_norm", "bleu", "chrf", "rouge_l", "non_following"]
    head = "".join(f"<th>{m}</th>" for m in metrics)
    body = []
    for (model, lang, task, proto), ms in by.items():
        any_row = next(iter(ms.values()))
        n = any_row.get("n")
        tds = []
        for m in metrics:
            r = ms.get(m)
            if r is None or r.get("value") is None:
                tds.append("<td></td>")
            elif m == "non_following":
                tds.append(f'<td>{int(r["value"])}/{r["n"]}</td>')
            elif m.startswith("accuracy"):
                tds.append(f'<td>{r["value"]:.3f}</td>')
            else:
                tds.append(f'<td>{r["value"]:.2f}</td>')
        mode = (any_row.get("settings") or {}).get("mode", "")
        body.append(f'<tr><td class="name">{_e(model)}</td><td class="name">{_e(lang)}/{_e(task)}</td>'
                    f'<td class="name">{_e(proto)}</td><td class="name">{_e(mode)}</td><td>{_num(n)}</td>{"".join(tds)}</tr>')
    sigs = sorted({s for r in rows for k, s in (r.get("settings") or {}).items() if k.endswith("_signature")})
    return ('<details id="details"><summary>All metrics (every model, task and protocol)</summary><table><tr>'
            '<th class="name">model</th><th class="name">task</th>'
            f'<th class="name">protocol</th><th class="name">mode</th><th>n</th>{head}</tr>{"".join(body)}</table>'
            '<p class="note">BLEU, chrF and ROUGE-L on 0-100; ROUGE-L is the mean sentence-level LCS F1 over Unicode '
            'word tokens. accuracy_norm divides each option\'s log-likelihood by its length in characters. '
            f'non_following: answers that named no label, repeated the input or were in the wrong language. '
            f'sacrebleu signatures: {_e(" | ".join(sigs)) or "none"}</p></details>')


def _section_categories(results: dict | None) -> str:
    tables = category_table(results) if results and "_error" not in results else []
    if not tables:
        return '<section id="categories"><h2>Multiple choice by category (Table 8)</h2>' + _not_run("Multiple choice with categories") + "</section>"
    parts = ['<section id="categories"><h2>Multiple choice by category (Table 8)</h2>']
    for t in tables:
        head = "".join(f"<th>{_e(c)} (n={t['n'].get(c)})</th>" for c in t["categories"])
        body = "".join(f'<tr><td class="name">{_e(r["model"])}</td>' + "".join(f"<td>{fmt(v)}</td>" for v in r["values"]) +
                       f"<td>{fmt(r['average'])}</td></tr>" for r in t["rows"])
        parts.append(f'<h3>{_e(t["task"])}</h3><table><tr><th class="name">model</th>{head}<th>Average</th></tr>{body}</table>')
    return "".join(parts) + "</section>"


def _section_protocol(results: dict | None) -> str:
    t = protocol_table(results) if results and "_error" not in results else None
    if not t:
        return ('<section id="protocol"><h2>Input translation protocol (Table 7)</h2>' +
                _not_run("The translation protocol (eval.protocol.enabled)") + "</section>")
    head = "".join(f"<th>{_e(c)}</th>" for c in t["columns"])
    body = ['<tr><td class="name">Random</td>' + "".join(f"<td>{fmt(v) if v is not None else '-'}</td>" for v in t["random"]) + "</tr>"]
    names = {"original": "Original (target-language instruction and input)",
             "translated-instruction": "Translated instructions",
             "translated-instruction+input": "Translated instructions + inputs"}
    for g in t["groups"]:
        body.append(f'<tr class="group"><td colspan="{len(t["columns"]) + 1}">{_e(names.get(g["protocol"], g["protocol"]))}</td></tr>')
        for r in g["rows"]:
            body.append(f'<tr><td class="name">{_e(r["model"])}</td>' + "".join(_cell_td(c) for c in r["cells"]) + "</tr>")
    return ('<section id="protocol"><h2>Input translation protocol (Table 7)</h2><table><tr><th class="name"></th>'
            f'{head}</tr>{"".join(body)}</table><p class="note">Target-language tasks run with the instruction '
            '(and the input) translated to English first; label words and the answer cue are English then. '
            'Summarization is BLEU/100.</p></section>')


BPC_TEXTS = ("target", "english", "target_documents", "english_documents")
"""The held-out texts a bpc.json may hold: lines, then whole documents."""


def _bpc_texts(bpc: dict) -> list[str]:
    """The held-out texts measured in this run: target and English lines always, documents when present."""
    present = {k for d in bpc.values() if isinstance(d, dict) for k in d}
    return [k for k in BPC_TEXTS if k in ("target", "english") or k in present]


def _bpc_points(bpc: dict) -> tuple[list, dict]:
    """Checkpoints 'before' and after each training stage, for each held-out text."""
    labels = {0.0: "before"}
    series: dict[str, list] = {k: [] for k in _bpc_texts(bpc)}
    x = 0.0
    first = True
    for stage in stages.TRAINING:
        data = bpc.get(stage)
        if not isinstance(data, dict) or "_error" in data:
            continue
        if first:
            for lang in series:
                v = (data.get(lang) or {}).get("start") if isinstance(data.get(lang), dict) else None
                if isinstance(v, (int, float)):
                    series[lang].append((0.0, float(v)))
            first = False
        x += 1
        labels[x] = stage
        for lang in series:
            v = (data.get(lang) or {}).get("end") if isinstance(data.get(lang), dict) else None
            if isinstance(v, (int, float)):
                series[lang].append((x, float(v)))
    return [(k, v) for k, v in series.items() if v], labels


def _section_bpc(data: dict, language: str) -> str:
    bpc = data["bpc"]
    if not bpc:
        return '<section id="bpc"><h2>Held-out bits per character</h2>' + _not_run("Training stages (align, pretrain, sft)") + "</section>"
    series, labels = _bpc_points(bpc)
    texts = _bpc_texts(bpc)
    names = {"target": f"{lang_name(language)} (target)", "english": "English",
             "target_documents": f"{lang_name(language)} documents", "english_documents": "English documents"}
    chart = svg_line_chart([(names.get(k, k), v) for k, v in series], title="Held-out bits per character after each stage",
                           xlabel="checkpoint", ylabel="bits per character", x_labels=labels)
    rows = []
    for stage in stages.TRAINING:
        d = bpc.get(stage)
        if not isinstance(d, dict):
            rows.append(f'<tr><td class="name">{stage}</td><td colspan="{2 * len(texts)}" class="name not-run">not run</td></tr>')
            continue
        cells = []
        for lang in texts:
            v = d.get(lang) if isinstance(d.get(lang), dict) else {}
            cells += [f"<td>{_num(v.get('start'), 3)}</td>", f"<td>{_num(v.get('end'), 3)}</td>"]
        rows.append(f'<tr><td class="name">{stage}</td>{"".join(cells)}</tr>')
    phases: dict[str, list] = {}
    for stage in stages.TRAINING:
        d = bpc.get(stage)
        if isinstance(d, dict) and isinstance((d.get("target") or {}).get("steps"), list):
            for s in d["target"]["steps"]:
                if isinstance(s, dict) and isinstance(s.get("step"), (int, float)) and isinstance(s.get("bpc"), (int, float)):
                    name = f"{stage} · {s['name']}" if s.get("name") and s.get("name") != stage else stage
                    phases.setdefault(name, []).append((float(s["step"]), float(s["bpc"])))
    step_series = [(k, v) for k, v in _in_sequence(phases) if len(v) > 1]
    steps_chart = svg_line_chart(step_series, title=f"{lang_name(language)} bits per character during training",
                                 xlabel="optimizer step (stages and their parts in order)",
                                 ylabel="bits per character") if step_series else ""
    return ('<section id="bpc"><h2>Held-out bits per character</h2><div class="charts">' + chart + steps_chart + "</div>"
            '<table><tr><th class="name">stage</th>' + "".join(f"<th>{_e(names[k])} start</th><th>end</th>" for k in texts)
            + f'</tr>{"".join(rows)}</table><p class="note">Bits per UTF-8 character on held-out text: '
            'comparable across tokenizers; lower is better. A rise on English after a stage is forgetting. Lines are '
            'scored one by one; documents whole, later windows seeing the earlier text.</p></section>')


def _section_loss(data: dict) -> str:
    charts = []
    for stage in stages.TRAINING:
        rows = data["metrics"].get(stage) or []
        by: dict[str, list] = {}
        for r in rows:
            loss = r.get("loss", r.get("train_loss"))
            step = r.get("step")
            if isinstance(loss, (int, float)) and isinstance(step, (int, float)) and math.isfinite(loss):
                by.setdefault(str(r.get("name") or stage), []).append((float(step), float(loss)))
        series = [(k, _downsample(v)) for k, v in _in_sequence({k: v for k, v in by.items() if v})]
        if series:
            xlabel = "optimizer step" + (" (parts in order)" if len(series) > 1 else "")
            charts.append(svg_line_chart(series, title=f"{stage}: training loss", xlabel=xlabel, ylabel="loss"))
    if not charts:
        return '<section id="loss"><h2>Training loss</h2>' + _not_run("Training stages (align, pretrain, sft)") + "</section>"
    return '<section id="loss"><h2>Training loss</h2><div class="charts">' + "".join(charts) + "</div></section>"


def _section_clean(rep) -> str:
    if rep is None:
        return '<section id="clean"><h2>Cleaning (Table 1)</h2>' + _not_run("The clean stage") + "</section>"
    if "_error" in rep:
        return f'<section id="clean"><h2>Cleaning (Table 1)</h2><p class="not-run">{_e(rep["_error"])}</p></section>'
    sources = rep.get("sources")
    if isinstance(sources, list) and sources and all(isinstance(s, dict) for s in sources):
        rows = sources + ([rep["totals"]] if isinstance(rep.get("totals"), dict) else [])
        reasons = list(dict.fromkeys(k for r in rows for k in (r.get("drops") or {})))
        biggest = max((r.get("original_bytes") or 0 for r in rows if isinstance(r.get("original_bytes"), (int, float))), default=0)
        unit, scale = ("MB", 1e6) if biggest >= 1e6 else ("kB", 1e3)
        head = (f'<tr><th class="name" rowspan="2">source</th><th class="name" rowspan="2">type</th>'
                f'<th rowspan="2">original {unit}</th><th rowspan="2">cleaned {unit}</th><th rowspan="2">kept %</th>'
                '<th rowspan="2">sentences in</th><th rowspan="2">sentences out</th>'
                f'<th colspan="{len(reasons)}">sentences dropped, by reason</th></tr><tr>' +
                "".join(f"<th>{_e(x.replace('_', ' '))}</th>" for x in reasons) + "</tr>")
        body = []
        for r in rows:
            ob, cb = r.get("original_bytes"), r.get("cleaned_bytes")
            pct = 100.0 * cb / ob if isinstance(ob, (int, float)) and ob and isinstance(cb, (int, float)) else None
            mb = (lambda v: f"{v / scale:,.2f}" if isinstance(v, (int, float)) else "")
            cls = ' class="avg"' if r.get("source") == "total" else ""
            body.append(f'<tr{cls}><td class="name">{_e(r.get("source", ""))}</td><td class="name">{_e(r.get("type", ""))}</td>'
                        f"<td>{mb(ob)}</td><td>{mb(cb)}</td><td>{_num(pct, 1) if pct is not None else ''}</td>"
                        f'<td>{_num(r.get("sentences_in"))}</td><td>{_num(r.get("sentences_out"))}</td>' +
                        "".join(f"<td>{_num((r.get('drops') or {}).get(x))}</td>" for x in reasons) + "</tr>")
        table = f"<table>{head}{''.join(body)}</table>"
    else:
        table = _generic(rep)
    return f'<section id="clean"><h2>Cleaning (Table 1)</h2>{table}</section>'


TOKENIZER_FACTS = ("base_model", "family", "base_vocab_size", "merged_vocab_size", "new_pieces", "new_tokens", "overlap",
                   "overlap_share", "init", "tied_embeddings", "english_identical")


def _section_tokenizer(rep) -> str:
    if rep is None:
        return '<section id="tokenizer"><h2>Tokenizer</h2>' + _not_run("The tokenizer stage") + "</section>"
    if "_error" in rep:
        return f'<section id="tokenizer"><h2>Tokenizer</h2><p class="not-run">{_e(rep["_error"])}</p></section>'
    fert = rep.get("fertility") if isinstance(rep.get("fertility"), dict) else {}
    parts = ['<section id="tokenizer"><h2>Tokenizer</h2>']
    body = []
    for text, d in fert.items():
        if not isinstance(d, dict) or not isinstance(d.get("base"), dict):
            continue
        base, merged = d["base"], d.get("merged") or {}
        measures = [k for k in base if "per_" in k] or [k for k in base if isinstance(base[k], (int, float))]
        for k in measures:
            b, m = base.get(k), merged.get(k)
            change = f"{100 * (m - b) / b:+.1f}%" if isinstance(b, (int, float)) and isinstance(m, (int, float)) and b else ""
            body.append(f'<tr><td class="name">{_e(text)}</td><td class="name">{_e(k.replace("_", " "))}</td>'
                        f"<td>{_num(b, 3)}</td><td>{_num(m, 3)}</td><td>{change}</td></tr>")
    if body:
        parts.append('<h3>Fertility before and after the merge</h3><table><tr><th class="name">held-out text</th>'
                     '<th class="name">measure</th><th>base</th><th>merged</th><th>change</th></tr>' + "".join(body) + "</table>")
    facts = {k: rep[k] for k in TOKENIZER_FACTS if k in rep}
    rest = {k: v for k, v in rep.items() if k not in facts and k != "fertility"}
    if facts:
        parts.append("<h3>Vocabulary</h3>" + _generic(facts))
    if rest:
        parts.append(f"<details><summary>All fields of tokenizer/report.json</summary>{_generic(rest)}</details>")
    return "".join(parts) + "</section>"


def render_html(data: dict) -> str:
    """The whole report page."""
    results = data["results"] if isinstance(data.get("results"), dict) else None
    language = (results or {}).get("language", {}).get("code") if results else None
    base = (results or {}).get("base_model", "")
    lang_label = (results or {}).get("language", {}).get("name") or (language or "")
    created = time.strftime("%Y-%m-%d %H:%M")
    settings = json.dumps((results or {}).get("settings", {}), ensure_ascii=False, indent=2)
    nav = "".join(f'<a href="#{i}">{t}</a>' for i, t in (
        ("tasks", "Tasks"), ("categories", "Categories"), ("protocol", "Translation protocol"), ("bpc", "Bits/char"),
        ("loss", "Loss"), ("clean", "Cleaning"), ("tokenizer", "Tokenizer"), ("stages", "Pipeline"), ("settings", "Settings")))
    body = [
        f'<header><h1>langadapt run report: {_e(data["name"])}</h1>'
        f'<p class="meta">base model {_e(base or "?")} · target language {_e(lang_label or "?")} · generated {created} · '
        f'{_e(data["run_dir"])}</p><nav>{nav}</nav></header>',
        _section_tasks(results),
        _section_categories(results),
        _section_protocol(results),
        _section_bpc(data, language or "target"),
        _section_loss(data),
        _section_clean(data["clean"]),
        _section_tokenizer(data["tokenizer"]),
        _section_stages(data),
        f'<section id="settings"><h2>Evaluation settings</h2><pre>{_e(settings)}</pre></section>'
        if results else '<section id="settings"><h2>Evaluation settings</h2>' + _not_run("Evaluation") + "</section>",
    ]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>langadapt report: {_e(data["name"])}</title>'
            f'<style>{CSS}</style></head><body>{"".join(body)}</body></html>\n')
