"""``streamtrain report``: a training run as one self-contained HTML page.

Curves per epoch (loss; accuracy or R^2) with the best epoch marked, the run's settings, the
data's fingerprint, and where a dataset is given ``evaluate``'s figures: the confusion matrix
and per-class table, and the ROC curve for two classes. The charts are inline SVG drawn here;
the page runs no script and fetches nothing.
"""

from __future__ import annotations

import html
import math
import os
from typing import Any

from .errors import StreamtrainError, os_reason
from .io.atomic import atomic_path
from .io.outputs import check_output

__all__ = ["write_report", "report_html"]

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def svg_chart(chart_id: str, series: list[tuple[str, list[tuple[float, float]]]], x_label: str, y_label: str,
              mark_x: float | None = None, square: bool = False, diagonal: bool = False) -> str:
    """An inline SVG line chart: ``series`` of ``(name, [(x, y), ...])``; ``mark_x`` a dashed
    vertical line (the best epoch); ``diagonal`` the chance line of a ROC curve."""
    w, h, left, bottom, top, right = (360, 360, 48, 36, 12, 12) if square else (560, 260, 56, 36, 12, 12)
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts if y is not None and math.isfinite(y)]
    out = [f'<svg id="{_e(chart_id)}" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" role="img" aria-label="{_e(y_label)} against {_e(x_label)}">']
    if not xs or not ys:
        out.append(f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle">no points</text></svg>')
        return "".join(out)
    x0, x1 = (0.0, 1.0) if square else (min(xs), max(xs))
    y0, y1 = (0.0, 1.0) if square else (min(ys), max(ys))
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.05 or 1), y1 + (abs(y1) * 0.05 or 1)

    def px(x):
        return left + (w - left - right) * (x - x0) / (x1 - x0)

    def py(y):
        return top + (h - top - bottom) * (1 - (y - y0) / (y1 - y0))

    out.append(f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" '
               'fill="none" stroke="#ccc"/>')
    for v, at in ((y1, top + 4), (y0, h - bottom)):
        out.append(f'<text x="{left - 4}" y="{at}" text-anchor="end" font-size="10">{_fmt(v)}</text>')
    for v, anchor in ((x0, "start"), (x1, "end")):
        out.append(f'<text x="{px(v):.1f}" y="{h - bottom + 14}" text-anchor="{anchor}" font-size="10">'
                   f'{_fmt(v)}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 4}" text-anchor="middle" font-size="11">'
               f'{_e(x_label)}</text>')
    if diagonal:
        out.append(f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(1)}" y2="{py(1)}" stroke="#bbb" stroke-dasharray="4 3"/>')
    if mark_x is not None:
        out.append(f'<line class="best" x1="{px(mark_x):.1f}" y1="{top}" x2="{px(mark_x):.1f}" y2="{h - bottom}" '
                   f'stroke="#777" stroke-dasharray="5 4"><title>best epoch {_e(mark_x)}</title></line>')
    for k, (name, pts) in enumerate(series):
        pts = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]
        colour = COLOURS[k % len(COLOURS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline data-series="{_e(name)}" data-points="{len(pts)}" points="{path}" fill="none" '
                   f'stroke="{colour}" stroke-width="1.8"/>')
        out.append(f'<text x="{left + 8}" y="{top + 14 + 13 * k}" font-size="11" fill="{colour}">{_e(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _table(table_id: str, header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table id="{_e(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def report_html(run_name: str, history: list[dict[str, Any]], meta: dict[str, Any], best_epoch: int | None,
                evaluation: dict[str, Any] | None = None) -> str:
    """The report's HTML (see the module's documentation)."""
    parts = [f"<h1>streamtrain run {_e(run_name)}</h1>"]
    state, model = meta.get("state", {}), meta.get("model", {})
    parts.append(f'<p id="summary">task {_e(model.get("task"))}, {len(history)} epoch'
                 f'{"s" if len(history) != 1 else ""} recorded, {_e(state.get("global_step"))} updates'
                 + (f', best epoch <b id="best-epoch">{_e(best_epoch)}</b>' if best_epoch else "") + "</p>")
    parts.append("<h2>Per epoch</h2>")
    if history:
        loss = [(name, [(h["epoch"], h.get(key)) for h in history]) for key, name in
                (("train_loss", "training"), ("val_loss", "validation")) if any(h.get(key) is not None for h in history)]
        parts.append(svg_chart("chart-loss", loss, "epoch", "loss", best_epoch))
        metric = [(name, [(h["epoch"], h.get(key)) for h in history]) for key, name in
                  (("train_accuracy", "training accuracy"), ("val_accuracy", "validation accuracy"),
                   ("val_r2", "validation R^2")) if any(h.get(key) is not None for h in history)]
        if metric:
            parts.append(svg_chart("chart-metric", metric, "epoch", "accuracy or R^2", best_epoch))
        keys = [k for k in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_r2",
                            "seconds", "samples_per_s") if any(k in h for h in history)]
        parts.append(_table("epochs", keys, [[h.get(k, "") for k in keys] for h in history]))
    else:
        parts.append("<p>no epoch finished yet</p>")
    if evaluation is not None:
        parts.append(f'<h2>Evaluated on {_e(evaluation.get("path"))} ({_e(evaluation.get("split", "all"))}, '
                     f'{evaluation.get("n", 0):,} rows)</h2>')
        if "confusion_matrix" in evaluation:
            figures = [("accuracy", evaluation["accuracy"]), ("log loss", evaluation["log_loss"])]
            if evaluation.get("roc_auc") is not None:
                figures.append(("ROC AUC", evaluation["roc_auc"]))
            parts.append(_table("figures", [f for f, _ in figures], [[v for _, v in figures]]))
            classes = [str(c) for c in evaluation["classes"]]
            parts.append("<h3>Per class</h3>")
            parts.append(_table("per-class", ["class", "precision", "recall", "f1", "support"],
                                [[c, p, r, f, n] for c, p, r, f, n in zip(classes, evaluation["precision"],
                                 evaluation["recall"], evaluation["f1"], evaluation["support"])]))
            parts.append("<h3>Confusion matrix (rows: true class, columns: predicted)</h3>")
            parts.append(_table("confusion", ["", *classes],
                                [[c, *row] for c, row in zip(classes, evaluation["confusion_matrix"])]))
            roc = evaluation.get("roc_curve")
            if roc:
                parts.append("<h3>ROC curve</h3>")
                parts.append(svg_chart("chart-roc", [("ROC", list(zip(roc["fpr"], roc["tpr"])))],
                                       "false positive rate", "true positive rate", square=True, diagonal=True))
        else:
            figures = [(k, evaluation[k]) for k in ("loss", "mse", "mae", "r2") if k in evaluation]
            parts.append(_table("figures", [f for f, _ in figures], [[v for _, v in figures]]))
    parts.append("<h2>Settings</h2>")
    config = meta.get("config", {})
    parts.append(_table("settings", ["setting", "value"], [[k, config[k]] for k in sorted(config)]))
    parts.append("<h2>Data</h2>")
    fp = meta.get("fingerprint", {})
    parts.append(_table("fingerprint", ["", ""], [[k, fp[k] if not isinstance(fp[k], list) else ", ".join(
        map(str, fp[k]))] for k in sorted(fp)]))
    style = ("body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:70em}"
             "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border-bottom:1px solid #eee;padding:.2em .6em;"
             "text-align:left}th{color:#666;font-weight:500}svg{margin:.5em 1em .5em 0;background:#fff}"
             "h1{font-size:20px}h2{font-size:16px;margin-top:1.5em}h3{font-size:14px}")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>streamtrain run {_e(run_name)}</title><style>{style}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_report(out: str | os.PathLike, page: str, overwrite: bool = False, inputs=()) -> str:
    """Write ``page`` to ``out`` atomically (``out`` must not exist unless ``overwrite``, and is
    never a run's file or one of ``inputs``: see ``io.outputs``)."""
    check_output(out, overwrite=overwrite, inputs=inputs)
    try:
        with atomic_path(out) as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(page)
    except OSError as e:
        raise StreamtrainError(f"{out}: cannot write ({os_reason(e)})") from None
    return os.fspath(out)
