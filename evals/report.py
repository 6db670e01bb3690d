"""The quality-eval report of a batch: one self-contained HTML file (plots and thumbnails inline)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from assets.image_files import ImageDecodeError, open_image
from evals.metrics import confusion_matrix
from evals.settings import EvalSettings
from evals.summary import headline_rows

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_FILE = "report.html"
SECTIONS = ("headline", "fields", "confusion", "tags", "latency", "worst", "clusters", "coverage")
THUMBNAIL = 160

# Per-field bars: (label, summary column).
FIELD_BARS = [
    ("primary_category", "category_accuracy"),
    ("scene_type", "scene_type_accuracy"),
    ("tags (semantic F1)", "tags_semantic_f1"),
    ("objects (semantic F1)", "objects_semantic_f1"),
    ("description", "description_score"),
    ("cluster name", "cluster_name_score"),
    ("palette", "palette_score"),
]


def _figure(figsize: tuple[float, float]) -> Figure:
    # matplotlib is imported here, not with the module: the code location loads this module, and
    # only the eval_report step draws.
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def png_base64(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def field_bars(summary: dict[str, Any], settings: EvalSettings) -> Figure:
    """Per-field scores and the headline with its confidence interval, against the target."""
    labels = [label for label, _ in FIELD_BARS] + ["metadata_accuracy"]
    values = [summary[column] or 0.0 for _, column in FIELD_BARS] + [summary["metadata_accuracy"] or 0.0]
    figure = _figure(figsize=(6, 3.2))
    ax = figure.subplots()
    colors = ["#7a9cc6"] * len(FIELD_BARS) + ["#2b5d9b"]
    ax.barh(labels, values, color=colors)
    low, high = summary["metadata_accuracy_ci_low"], summary["metadata_accuracy_ci_high"]
    if low is not None and high is not None:
        ax.errorbar([values[-1]], [len(labels) - 1], xerr=[[values[-1] - low], [high - values[-1]]],
                    fmt="none", ecolor="black", capsize=4)
    ax.axvline(settings.min_metadata_accuracy, color="#c0392b", linestyle="--", label="target")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("score (1 = agrees with the reference)")
    ax.legend(loc="lower right", fontsize=8)
    return figure


def confusion_figure(truth: list[str], predicted: list[str | None]) -> Figure:
    labels, matrix = confusion_matrix(truth, predicted)
    figure = _figure(figsize=(1.2 + 0.5 * len(labels), 1.0 + 0.45 * len(labels)))
    ax = figure.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("ours")
    ax.set_ylabel("reference")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    return figure


def tag_f1_figure(exact: list[float], semantic: list[float]) -> Figure:
    figure = _figure(figsize=(5, 2.6))
    ax = figure.subplots()
    bins = np.linspace(0, 1, 11)
    ax.hist([exact, semantic], bins=bins, label=["exact", "semantic"], color=["#bbbbbb", "#2b5d9b"])
    ax.set_xlabel("tags F1 per image")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    return figure


def latency_figure(end_to_end_s: list[float], limit_s: float) -> Figure:
    figure = _figure(figsize=(5, 2.6))
    ax = figure.subplots()
    ax.hist(end_to_end_s, bins=min(30, max(5, len(end_to_end_s))), color="#7a9cc6")
    if end_to_end_s:
        ax.axvline(float(np.percentile(end_to_end_s, 95)), color="black", label="p95")
    ax.axvline(limit_s, color="#c0392b", linestyle="--", label="p95 limit")
    ax.set_xlabel("end-to-end seconds per image")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    return figure


def thumbnail_base64(batch_dir: Path, rel_path: str, max_pixels: int) -> str | None:
    """A small JPEG of the image as the models saw it (oriented, RGB), or None when it cannot be
    read (the report still renders)."""
    try:
        image = open_image(batch_dir, rel_path, max_pixels)
    except (OSError, ImageDecodeError):
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode()


@dataclass
class ReportInputs:
    batch: str
    summary: dict[str, Any]  # the eval_summary row
    metadata_eval: list[dict[str, Any]]
    cluster_eval: dict[str, Any] | None
    ours: dict[str, dict[str, Any]]  # image_metadata rows by path
    reference: dict[str, dict[str, Any]]  # baseline image records by path of the image they cover
    problems: list[tuple[int, str]]  # baseline lines that did not load
    end_to_end_s: list[float]
    images_dir: Path  # the batch folder, for thumbnails
    max_image_pixels: int  # the pipeline's decompression-bomb limit, for thumbnails too
    random_weight_models: tuple[str, ...] = ()  # models of these results that have random weights


def _e(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return html.escape(", ".join(_object_text(v) for v in value))
    return html.escape(str(value))


def _object_text(value: Any) -> str:
    if isinstance(value, dict):
        confidence = value.get("confidence")
        return value["name"] + ("" if confidence is None else f" ({confidence:.2f})")
    return str(value)


def _swatches(colors: list[str] | None) -> str:
    if not colors:
        return "–"
    return "".join(f'<span class="sw" style="background:{html.escape(c)}" title="{html.escape(c)}"></span>'
                   for c in colors)


def _img(b64: str | None, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">' if b64 else ""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_SIDE_BY_SIDE = [
    ("primary_category", "category_score"), ("scene_type", "scene_type_score"), ("tags", "tags_semantic_f1"),
    ("detected_objects", "objects_semantic_f1"), ("description", "description_score"),
    ("suggested_cluster_name", "cluster_name_score"), ("color_palette", "palette_score"),
]


def _worst_images(inputs: ReportInputs, count: int) -> str:
    scored = sorted((r for r in inputs.metadata_eval if r["score"] is not None), key=lambda r: (r["score"], r["path"]))
    blocks = []
    for r in scored[:count]:
        ours, ref = inputs.ours.get(r["path"], {}), inputs.reference.get(r["path"], {})
        rows = []
        for field, score in _SIDE_BY_SIDE:
            show = _swatches if field == "color_palette" else _e
            rows.append([field, show(ours.get(field)), show(ref.get(field)), _e(r.get(score))])
        thumb = thumbnail_base64(inputs.images_dir, r["path"], inputs.max_image_pixels)
        image = f'<img class="thumb" alt="{_e(r["path"])}" src="data:image/jpeg;base64,{thumb}">' if thumb else ""
        status = "" if r["status"] == "ok" else f" — our pipeline failed: {_e(ours.get('error'))}"
        blocks.append(
            f'<div class="worst"><h3>{_e(r["path"])}: score {_e(r["score"])}{status}</h3>{image}'
            + _table(["field", "ours", "reference", "score"], rows) + "</div>"
        )
    return "".join(blocks) or "<p>No image is covered by the baseline.</p>"


def _clusters(cluster_eval: dict[str, Any] | None) -> str:
    if not cluster_eval:
        return "<p>No cluster evaluation.</p>"
    figures = _table(
        ["ARI / NMI vs names", "ARI / NMI vs categories", "silhouette", "clusters", "noise share"],
        [[f"{_e(cluster_eval['ari_cluster_name'])} / {_e(cluster_eval['nmi_cluster_name'])}",
          f"{_e(cluster_eval['ari_category'])} / {_e(cluster_eval['nmi_category'])}",
          _e(cluster_eval["silhouette"]), _e(cluster_eval["n_clusters"]), _e(cluster_eval["noise_share"])]],
    )
    rows = [[_e(c["cluster_id"]), _e(c["size"]), _e(c["cluster_name"]), _e(c["member_name_similarity"]),
             _e(c["reference_cluster_name"]), _e(c["reference_overlap"]), _e(c["name_similarity"]),
             _e(c["description_similarity"]), _e(c["tags_semantic_f1"]), _e(c["category_score"])]
            for c in cluster_eval["clusters"]]
    detail = _table(["id", "size", "our label", "~ members' names", "reference cluster", "overlap", "name sim.",
                     "description sim.", "tags F1", "category"], rows)
    return figures + detail


def _coverage(inputs: ReportInputs) -> str:
    uncovered = [[_e(r["path"]), _e(r["uncovered_reason"])] for r in inputs.metadata_eval if not r["covered"]]
    parts = [f"<p>{len(uncovered)} of {len(inputs.metadata_eval)} images have no baseline record.</p>"]
    if uncovered:
        parts.append(_table(["image", "why"], uncovered))
    if inputs.problems:
        parts.append(f"<p>{len(inputs.problems)} baseline lines did not load:</p>")
        parts.append(_table(["line", "reason"], [[str(line), html.escape(reason)] for line, reason in inputs.problems]))
    return "".join(parts)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:top;font-size:14px}th{background:#f2f2f2}.sw{display:inline-block;width:18px;height:18px;
margin-right:2px;border:1px solid #999}.worst{border-top:1px solid #ddd;padding-top:.5em}.thumb{float:right;
margin-left:1em}.worst table{max-width:850px}section{clear:both}.warn{background:#fde2e1;padding:.5em}
"""


def render_report(inputs: ReportInputs, settings: EvalSettings) -> str:
    s = inputs.summary
    covered = [r for r in inputs.metadata_eval if r["covered"]]
    category_pairs = [(r["category_reference"], r["category_ours"]) for r in covered if r["category_reference"]]
    confusion = (
        _img(png_base64(confusion_figure([t for t, _ in category_pairs], [p for _, p in category_pairs])),
             "category confusion matrix")
        if category_pairs else "<p>No reference categories.</p>"
    )
    exact = [r["tags_exact_f1"] for r in covered if r["tags_exact_f1"] is not None]
    semantic = [r["tags_semantic_f1"] for r in covered if r["tags_semantic_f1"] is not None]
    stages = [(name.removesuffix("_p50_ms"), s[name], s[name.replace("p50", "p95")])
              for name in s if name.endswith("_p50_ms")]
    body = {
        "headline": _table(
            ["figure", "value", "target"],
            [[html.escape(f), html.escape(v), html.escape(t)] for f, v, t in headline_rows(s, settings)],
        ),
        "fields": _img(png_base64(field_bars(s, settings)), "per-field scores"),
        "confusion": confusion,
        "tags": _img(png_base64(tag_f1_figure(exact, semantic)), "tag F1 distribution"),
        "latency": _img(png_base64(latency_figure(inputs.end_to_end_s, settings.max_p95_latency_s)),
                        "latency histogram")
        + _table(["stage", "p50 ms", "p95 ms"], [[html.escape(n), _e(p50), _e(p95)] for n, p50, p95 in stages]),
        "worst": _worst_images(inputs, settings.report_worst_images),
        "clusters": _clusters(inputs.cluster_eval),
        "coverage": _coverage(inputs),
    }
    titles = {
        "headline": "Headline", "fields": "Per-field scores", "confusion": "primary_category confusion matrix",
        "tags": "Tag F1 distribution", "latency": "Latency",
        "worst": f"The {settings.report_worst_images} worst images",
        "clusters": "Clusters and their labels", "coverage": "Coverage and baseline problems",
    }
    warning = (f"<p class='warn'><b>Random weights:</b> {html.escape(', '.join(inputs.random_weight_models))} "
               "produced these results; they are meaningless.</p>" if inputs.random_weight_models else "")
    sections = warning + "".join(f'<section id="{name}"><h2>{titles[name]}</h2>{body[name]}</section>'
                                 for name in SECTIONS)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>pixelsift quality eval: {html.escape(inputs.batch)}"
        f"</title><style>{_STYLE}</style></head><body><h1>Quality eval of batch {html.escape(inputs.batch)}</h1>"
        f"<p>Reference: {_e(s['baseline_source'])}. Evaluated {_e(s['evaluated_at'])}.</p>{sections}</body></html>"
    )


def report_path(reports_dir: Path, batch: str) -> Path:
    return reports_dir / batch / REPORT_FILE


def report_url(reports_url: str, batch: str) -> str:
    """The report's address where `pixelsift ui` serves ``reports_dir``: the same relative path."""
    return f"{reports_url.rstrip('/')}/{quote(batch)}/{REPORT_FILE}"


def write_report(inputs: ReportInputs, settings: EvalSettings, reports_dir: Path) -> Path:
    path = report_path(reports_dir, inputs.batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_report(inputs, settings), encoding="utf-8")
    tmp.replace(path)
    return path
