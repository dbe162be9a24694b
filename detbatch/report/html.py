"""The report page: one HTML file, its script and style inline, the data it draws embedded as JSON."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from html import escape
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from detbatch.report.data import SCORE_BINS, Summary

# The slider's starting value: low-scoring boxes clutter a thumbnail, and 0.5 is where most detectors'
# boxes start to be mostly right; the user moves it.
START_THRESHOLD = 0.5


@dataclass(frozen=True)
class Page:
    """Everything the page shows. ``images``: the gallery, dicts as :func:`image_entry` makes them;
    ``worst``: (title, run image ids) lists; ``errors``: (uri, reason) of every image in error."""

    title: str
    summary: Summary
    info: dict[str, Any] | None
    categories: list[str]
    images: list[dict[str, Any]]
    worst: list[tuple[str, list[int]]]
    errors: list[tuple[str, str]]
    has_truth: bool
    metrics: dict[str, Any] | None
    pictures: list[str]
    diagnostics: dict[str, str]


def link_of(uri: str) -> str:
    """An href for ``uri``: local paths as ``file://`` URLs, a shard member as its shard."""
    if "://" in uri:
        return uri
    return Path(uri).absolute().as_uri()


def _histogram_svg(counts: np.ndarray, width: int = 200, height: int = 50) -> str:
    top = max(int(counts.max()) if len(counts) else 0, 1)
    bar = width / SCORE_BINS
    bars = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - height * n / top:.1f}" width="{bar - 1:.1f}" '
        f'height="{height * n / top:.1f}"><title>{i / SCORE_BINS:.2f}-{(i + 1) / SCORE_BINS:.2f}: {n}</title></rect>'
        for i, n in enumerate(counts.tolist())
    )
    return f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}">{bars}</svg>'


def _summary(page: Page) -> str:
    s, info = page.summary, page.info or {}
    tiles = [("images ok", s.images_ok, "images-ok"), ("images in error", s.images_error, "images-error"),
             ("detections", s.detections, "detections")]
    if info.get("images_per_second") is not None:
        tiles.append(("images/s", info["images_per_second"], "throughput"))
    if info.get("wall_seconds") is not None:
        tiles.append(("wall seconds", info["wall_seconds"], "wall"))
    out = ['<div class="tiles">']
    out += [f'<div class="tile" id="{i}">{escape(str(v))}<small>{escape(k)}</small></div>' for k, v, i in tiles]
    out.append('</div><div class="row"><div><h3>Scores, all categories</h3>')
    out.append(_histogram_svg(s.histograms.sum(axis=0) if len(s.histograms) else np.zeros(SCORE_BINS, np.int64)))
    out.append('</div><div><h3>Per category</h3><table id="categories"><tr><th>category</th><th>detections</th>'
               "<th>scores 0 → 1</th></tr>")
    order = np.argsort(-s.histograms.sum(axis=1), kind="stable") if len(s.histograms) else []
    for c in order:
        out.append(f'<tr data-category="{escape(s.categories[c])}"><td>{escape(s.categories[c])}</td>'
                   f'<td class="n">{int(s.histograms[c].sum())}</td><td>{_histogram_svg(s.histograms[c], 160, 24)}</td></tr>')
    out.append("</table></div><div>")
    if info:
        model = info.get("model", {})
        config = info.get("config", {})
        rows = [("input", info.get("input", {}).get("uri")), ("model", model.get("name")),
                ("weights", model.get("weights")), ("device", model.get("device")),
                ("score threshold", config.get("model", {}).get("score_threshold")),
                ("finished at", info.get("finished_at"))]
        out.append('<h3>Settings</h3><table id="settings">')
        out += [f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows if v is not None]
        out.append("</table><details><summary>run.json</summary><pre>"
                   f"{escape(json.dumps(info, indent=2))}</pre></details>")
    else:
        out.append("<p>No run.json: the run is not finished; these are its committed parts.</p>")
    out.append("</div></div>")
    return "".join(out)


def _evaluation(page: Page) -> str:
    out = []
    m = page.metrics
    out.append('<div class="row"><div>')
    if m:
        stats = [k for k in ("AP", "AP50", "AP75", "AR100", "mAP") if k in m]
        out.append('<table id="metrics"><tr>' + "".join(f"<th>{k}</th>" for k in stats) + "</tr><tr>"
                   + "".join(f'<td class="n">{m[k]:.3f}</td>' for k in stats) + "</tr></table>")
        per = m.get("per_category", {})
        if per:
            keys = [k for k in ("AP", "AP50", "num_gt", "num_detections") if k in next(iter(per.values()))]
            out.append("<table><tr><th>category</th>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>")
            for name, row in per.items():
                cells = "".join(f'<td class="n">{row[k]:.3f}</td>' if isinstance(row[k], float) else
                                f'<td class="n">{row[k]}</td>' for k in keys)
                out.append(f"<tr><td>{escape(name)}</td>{cells}</tr>")
            out.append("</table>")
    out.append("</div><div>")
    for picture in page.pictures:
        out.append(f'<img alt="{escape(picture)}" src="{escape(picture)}" class="curves">')
    out.append("</div></div>")
    for name, text in page.diagnostics.items():
        out.append(f"<details><summary>{escape(name)}</summary><pre>{escape(text)}</pre></details>")
    return "".join(out)


def _card(im: dict[str, Any]) -> str:
    ratio = f"{max(im['w'], 1)} / {max(im['h'], 1)}"
    picture = f'<img alt="" src="{escape(im["thumb"])}">' if im.get("thumb") else ""
    return (f'<div class="card" data-image-id="{im["id"]}"><div class="frame" style="aspect-ratio: {ratio}">'
            f'{picture}<svg viewBox="0 0 {im["w"]} {im["h"]}" preserveAspectRatio="none"></svg></div>'
            f'<span class="count"></span><br><a href="{escape(im["href"])}">{escape(im["uri"])}</a></div>')


def _errors(errors: list[tuple[str, str]]) -> str:
    if not errors:
        return "<p>No input is in error.</p>"
    groups: dict[str, list[str]] = defaultdict(list)
    for uri, reason in errors:
        groups[reason_of(uri, reason)].append(uri)
    out = []
    for reason, uris in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])):
        out.append(f'<h3>{escape(reason)} ({len(uris)})</h3><table class="errors"><tr><th>uri</th><th>reason</th></tr>')
        out += [f'<tr><td><a href="{escape(link_of(u))}">{escape(u)}</a></td><td>{escape(reason)}</td></tr>' for u in uris]
        out.append("</table>")
    return "".join(out)


def reason_of(uri: str, error: str) -> str:
    """The reason an input failed, without its own uri, so that inputs failing alike group together."""
    return (error or "unknown error").replace(uri, "…").strip()


def render_page(page: Page) -> str:
    here = files("detbatch.report")
    script = here.joinpath("page.js").read_text(encoding="utf-8")
    style = here.joinpath("page.css").read_text(encoding="utf-8")
    data = {"categories": page.categories, "images": page.images}
    embedded = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    by_id = {im["id"]: im for im in page.images}
    toggles = "".join(f'<label><input type="checkbox" class="category" value="{escape(c)}" checked> {escape(c)}</label>'
                      for c in page.categories)
    truth = ('<label><input type="checkbox" id="show-gt"> ground-truth boxes</label>'
             '<span class="legend"><span style="color:#1a9850">■ true positive</span>'
             '<span style="color:#d73027">■ false positive</span><span style="color:#fdae61">■ missed</span></span>'
             if page.has_truth else "")
    sections = [f"<h1>{escape(page.title)}</h1>", "<h2>Summary</h2>", _summary(page)]
    if page.metrics or page.pictures or page.diagnostics:
        sections += ["<h2>Evaluation</h2>", _evaluation(page)]
    sections.append('<div class="controls"><label>score ≥ <input type="range" id="score" min="0" max="1" step="0.01" '
                    f'value="{START_THRESHOLD}"> <span id="score-value"></span></label>{truth}<br>{toggles}</div>')
    for title, ids in page.worst:
        sections.append(f"<h2>{escape(title)}</h2><div class=\"gallery worst\">"
                        + "".join(_card(by_id[i]) for i in ids if i in by_id) + "</div>")
    gallery = [im for im in page.images if im.get("sampled")]
    sections.append(f'<h2>Gallery ({len(gallery)} sampled images)</h2><div class="gallery" id="gallery">'
                    + "".join(_card(im) for im in gallery) + "</div>")
    sections += [f'<h2 id="errors">Errors ({len(page.errors)})</h2>', _errors(page.errors)]
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\">"
            f"<title>{escape(page.title)}</title><style>{style}</style></head><body>" + "".join(sections)
            + f'<script type="application/json" id="report-data">{embedded}</script><script>{script}</script>'
            "</body></html>")
