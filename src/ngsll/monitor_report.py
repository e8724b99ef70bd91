"""The explanation-drift report as one self-contained HTML page (figures inlined, readable offline).

Images: the reference and live global NormLIME maps over the cells side by side, and the change in how often
each cell is selected. Text: the reference and live top words side by side. Both: the drift numbers against
their thresholds, the class shares, the features that moved, and what the capture scan skipped.
"""

from __future__ import annotations

import base64
import html
import io
import time

import numpy as np

from ngsll.monitoring import CaptureScan, DriftReport, ExplanationProfile
from ngsll.plots import cell_maps

TOP_WORDS = 15


def _figure_uri(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def maps_figure(reference: ExplanationProfile, live: ExplanationProfile):
    """Reference importance | live importance | change in selection frequency, over the image's cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = reference.image["grid"]
    panels = [("reference NormLIME importance", cell_maps(reference.normlime.global_importance_[None], grid)[0], "viridis"),
              ("live NormLIME importance", cell_maps(live.normlime.global_importance_[None], grid)[0], "viridis"),
              ("change in selection frequency", cell_maps((live.overall_selection - reference.overall_selection)[None],
                                                          grid)[0], "RdBu_r")]
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    top = max(float(panels[0][1].max()), float(panels[1][1].max()), 1e-12)
    for axis, (title, values, cmap) in zip(axes, panels):
        if cmap == "RdBu_r":
            bound = max(float(np.abs(values).max()), 1e-12)
            shown = axis.imshow(values, cmap=cmap, vmin=-bound, vmax=bound)
        else:
            shown = axis.imshow(values, cmap=cmap, vmin=0, vmax=top)
        axis.set_title(title, fontsize=9)
        axis.set_xticks([]), axis.set_yticks([])
        figure.colorbar(shown, ax=axis, fraction=0.046)
    return figure


def _top_table(profile: ExplanationProfile, title: str) -> str:
    importance = profile.normlime.global_importance_ if profile.samples else np.zeros(len(profile.feature_names))
    order = [j for j in np.argsort(-importance, kind="stable")[:TOP_WORDS] if importance[j] > 0]
    rows = "".join(f"<tr><td>{html.escape(profile.feature_names[j])}</td><td>{importance[j]:.4f}</td>"
                   f"<td>{profile.overall_selection[j]:.3f}</td></tr>" for j in order)
    return (f"<table><caption>{html.escape(title)}</caption><tr><th>feature</th><th>NormLIME</th>"
            f"<th>selected in</th></tr>{rows}</table>")


def drift_html(report: DriftReport, reference: ExplanationProfile, live: ExplanationProfile, scan: CaptureScan,
               title: str) -> str:
    """The whole page."""
    verdict = ("DRIFT: " + ", ".join(name for name, raised in report.flags.items() if raised) if report.drifted
               else "no drift" if report.enough_samples else
               f"not enough explanations ({report.samples} < {int(report.thresholds['min_samples'])}): nothing flagged")

    def number(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    checks = [("nDCG of the global importance", number(report.ndcg), f"&lt; {report.thresholds['ndcg']}", report.flags["ndcg"]),
              ("max per-class JS divergence of selections",
               number(max((v for v in report.class_js.values() if v is not None), default=None)),
               f"&gt; {report.thresholds['js']}", report.flags["js"]),
              ("predicted-class share shift (TV distance)", number(report.share_shift),
               f"&gt; {report.thresholds['share_shift']}", report.flags["share_shift"])]
    check_rows = "".join(f"<tr class=\"{'bad' if raised else 'ok'}\"><td>{name}</td><td>{value}</td><td>{rule}</td>"
                         f"<td>{'flagged' if raised else 'ok'}</td></tr>" for name, value, rule, raised in checks)
    class_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{report.class_shares['reference'][name]:.3f}</td>"
        f"<td>{report.class_shares['live'][name]:.3f}</td><td>{number(report.class_js[name])}</td></tr>"
        for name in reference.class_names)
    moved_rows = "".join(
        f"<tr><td>{html.escape(m['feature'])}</td><td>{m['reference_selection']:.3f}</td><td>{m['live_selection']:.3f}</td>"
        f"<td>{m['change']:+.3f}</td><td>{m['reference_importance']:.4f}</td><td>{m['live_importance']:.4f}</td></tr>"
        for m in report.moved_features)
    if reference.image and live.samples:
        pictures = f'<img alt="importance maps" src="{_figure_uri(maps_figure(reference, live))}">'
    else:
        pictures = f'<div class="side">{_top_table(reference, "reference")}{_top_table(live, "live")}</div>'
    window = ("" if scan.first_time is None else
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(scan.first_time))} – "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(scan.last_time))} UTC")
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in scan.problems) or "<li>none</li>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}tr.bad td{{background:#fdd}}tr.ok td{{background:#efe}}
.side{{display:flex;gap:3em}}caption{{font-weight:bold}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p><b>{html.escape(verdict)}</b></p>
<p>{report.samples} live explanations ({html.escape(window)}) against the reference's {report.reference_samples}
({html.escape(reference.source)}).</p>
<table><tr><th>check</th><th>value</th><th>flagged when</th><th></th></tr>{check_rows}</table>
<h2>What the model relies on</h2>{pictures}
<h2>Features that moved most</h2>
<table><tr><th>feature</th><th>selected in (reference)</th><th>selected in (live)</th><th>change</th>
<th>NormLIME (reference)</th><th>NormLIME (live)</th></tr>{moved_rows}</table>
<h2>Predicted classes</h2>
<table><tr><th>class</th><th>share (reference)</th><th>share (live)</th><th>JS of selections</th></tr>{class_rows}</table>
<h2>Capture scan</h2>
<p>{scan.files} files, {scan.records} records used, {scan.bad_lines} unreadable or truncated lines skipped,
{scan.outside_window} outside the window, {scan.other_models} of other models.</p><ul>{problems}</ul>
</body></html>
"""
