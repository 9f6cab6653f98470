"""One self-contained HTML page of an evaluation: metrics tables, plots and the worst errors.

Every image is a base64 PNG data URI and the CSS is inline, so the file can be mailed or archived
alone and opens offline. evaluate.py collects the numbers and plots; this module only lays them out.
"""
import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from utils.overlays import overlay_masks

# In page order, with the width each takes on a wide screen: the three small tables share a row, the two
# square plots share one, and the confusion matrix keeps a row to itself so that its class names stay legible
SECTIONS = ("Segmentation", "Normal vs abnormal", "Calibration", "Classification", "Confusion matrix", "ROC curves",
            "Reliability diagram", "Worst errors")
WIDTHS = {"Segmentation": "third", "Normal vs abnormal": "third", "Calibration": "third", "ROC curves": "half",
          "Reliability diagram": "half"}  # the others: the whole row
THUMBNAIL_SIDE = 200  # px: gallery cells are drawn at this size, so outlines stay one screen pixel wide

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; margin: 0; background: #f4f5f7; }
main { max-width: 1160px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
.grid { display: grid; grid-template-columns: repeat(6, 1fr); column-gap: 36px; }
.grid > section { min-width: 0; grid-column: span 6; overflow-x: auto; }
.grid > section.third { grid-column: span 2; }
.grid > section.half { grid-column: span 3; }
@media (max-width: 900px) { .grid > section.third, .grid > section.half { grid-column: span 6; } }
.tables { display: flex; gap: 4px 40px; flex-wrap: wrap; align-items: flex-start; }
#confusion-matrix img.plot { max-width: 820px; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 19px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #dde1e6; }
p.meta { color: #555; margin: 0 0 4px; font-size: 14px; }
p.note { color: #555; font-size: 13px; }
table { border-collapse: collapse; font-size: 14px; margin: 6px 0 12px; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e3e6ea; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eef1f4; }
tr.total td { font-weight: 600; border-top: 2px solid #c8ced6; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 16px 0 4px; }
.card { background: #eef3fb; border-radius: 6px; padding: 10px 16px; min-width: 130px; }
.card b { display: block; font-size: 22px; }
.card span { color: #555; font-size: 13px; }
img.plot { max-width: 100%; height: auto; display: block; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 14px; }
.gallery figure { margin: 0; border: 1px solid #e3e6ea; border-radius: 6px; padding: 6px; background: #fafbfc; }
.gallery img { display: block; margin: 0 auto; max-width: 100%; }
.gallery figcaption { font-size: 13px; margin-top: 6px; line-height: 1.45; overflow-wrap: anywhere; }
.gallery .name { color: #555; font-size: 12px; }
.wrong { color: #b3261e; font-weight: 600; }
.legend { font-size: 13px; color: #555; }
.swatch { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; vertical-align: middle; }
"""


@dataclass
class ErrorExample:
    """A misclassified cell for the gallery."""

    name: str  # the cell's sample id
    thumbnail: np.ndarray  # uint8 RGB, masks drawn on it
    true_class: str
    predicted_class: str
    probability: float  # of the predicted class


def worst_errors(labels: np.ndarray, probs: np.ndarray, limit: int) -> List[int]:
    """Indices of the misclassified cells, the most confident (highest predicted probability) first."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    order = np.argsort(-probs[wrong, predicted[wrong]], kind="stable")
    return wrong[order][:limit].tolist()


def thumbnail(image: np.ndarray, cell_mask: np.ndarray, nuc_mask: np.ndarray, true_cell=None, true_nuc=None,
              side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """The cell scaled to `side` px on its longer edge, then the mask outlines drawn (as in overlays.png)."""
    height, width = image.shape[:2]
    size = (max(1, round(width * side / max(height, width))), max(1, round(height * side / max(height, width))))
    interpolation = cv2.INTER_AREA if max(height, width) > side else cv2.INTER_CUBIC
    def scaled(mask):
        return None if mask is None else cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    return overlay_masks(cv2.resize(image, size, interpolation=interpolation), scaled(cell_mask), scaled(nuc_mask),
                         scaled(true_cell), scaled(true_nuc))


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def array_data_uri(image_rgb: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode an image as PNG")
    return png_data_uri(encoded.tobytes())


def number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "&ndash;"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def table(headers: Sequence[str], rows: Sequence[Sequence], total_rows: int = 0) -> str:
    """An HTML table; cells are numbers (formatted) or text (escaped); the last total_rows rows are set in bold."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        css = ' class="total"' if index >= len(rows) - total_rows else ""
        cells = "".join(f"<td>{number(cell) if not isinstance(cell, str) else html.escape(cell)}</td>" for cell in row)
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def section(title: str, body: str) -> str:
    slug = title.lower().replace(" ", "-")
    css = f' class="{WIDTHS[title]}"' if title in WIDTHS else ""
    return f'<section id="{slug}"{css}><h2>{html.escape(title)}</h2>{body}</section>'


def plot(path: Optional[Path], alt: str) -> str:
    if path is None or not Path(path).is_file():
        return '<p class="note">not drawn</p>'
    return f'<img class="plot" alt="{html.escape(alt)}" src="{png_data_uri(Path(path).read_bytes())}">'


def segmentation_body(seg: Dict) -> str:
    if not seg:
        return '<p class="note">No ground-truth masks for these cells: segmentation was not scored.</p>'
    rows = [[label] + [seg.get(f"{metric}_{head}") for metric in ("dice", "iou", "pixel_acc")]
            for head, label in (("cyt", "cell (cyt)"), ("nuc", "nucleus (nuc)"))]
    return table(["head", "Dice", "IoU", "pixel acc."], rows) + '<p class="note">cyt is the whole cell, nucleus included.</p>'


def classification_body(cls: Dict) -> str:
    auc = cls.get("roc_auc_per_class", {})
    rows = [[name, m["precision"], m["recall"], m["f1"], auc.get(name), m["support"]] for name, m in cls["per_class"].items()]
    rows.append(["macro", cls["macro_precision"], cls["macro_recall"], cls["macro_f1"], cls["roc_auc_macro"], cls["num_samples"]])
    low, high = cls.get("accuracy_ci95", (None, None))
    summary = table(["", "value"], [["accuracy", cls["accuracy"]], ["95% bootstrap interval",
                                    f"{number(low, 3)} – {number(high, 3)}"],
                                   ["balanced accuracy", cls["balanced_accuracy"]], ["weighted F1", cls["weighted_f1"]]])
    per_class = table(["class", "precision", "recall", "F1", "ROC-AUC", "support"], rows, total_rows=1)
    confused = table(["true class", "predicted as", "cells", "share of true class"],
                     [[pair["true"], pair["predicted"], str(pair["count"]), f"{pair['share']:.0%}"]
                      for pair in cls["most_confused"]]) if cls.get("most_confused") else ""
    return f'<div class="tables">{per_class}{summary}{confused}</div>'


def binary_body(binary: Optional[Dict]) -> str:
    if not binary:
        return '<p class="note">Not computed: every class counts as normal or every class as abnormal (see --normal-classes).</p>'
    (tn, fp), (fn, tp) = binary["confusion_matrix"]
    rows = [[name, binary[key]] for name, key in (("accuracy", "accuracy"), ("sensitivity (abnormal recall)", "sensitivity"),
                                                  ("specificity (normal recall)", "specificity"), ("F1 (abnormal)", "f1"),
                                                  ("ROC-AUC", "roc_auc"),
                                                  ("sensitivity at 90 % specificity", "sensitivity_at_90_specificity"),
                                                  ("sensitivity at 95 % specificity", "sensitivity_at_95_specificity"))
            if key in binary]
    counts = table(["true \\ predicted", "normal", "abnormal"], [["normal", str(tn), str(fp)], ["abnormal", str(fn), str(tp)]])
    return f'<div class="tables">{table(["", "value"], rows)}{counts}</div>'


def grades_body(grades: Optional[Dict]) -> str:
    """Bethesda's three grades (NILM / low / high), for a classifier trained in Bethesda's classes; '' otherwise."""
    if not grades:
        return ""
    rows = [[name, grades.get(key)] for name, key in (("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"),
                                                      ("macro F1", "macro_f1"),
                                                      ("quadratic weighted kappa", "quadratic_weighted_kappa"))]
    names = grades["class_names"]
    confusion = table(["true \\ predicted", *names],
                      [[name, *map(str, row)] for name, row in zip(names, grades["confusion_matrix"])])
    return ('<h3>Three grades: NILM / low (ASC-US, LSIL) / high (ASC-H, HSIL, SCC)</h3><div class="tables">'
            f'{table(["", "value"], rows)}{confusion}</div>')


def calibration_body(calibration: Optional[Dict]) -> str:
    if not calibration:
        return '<p class="note">Not computed.</p>'
    rows = [["temperature T", calibration["temperature"]], ["ECE before (T = 1)", calibration["ece_before"]],
            ["ECE after (fitted T)", calibration["ece_after"]]]
    note = ('<p class="note">Probabilities are softmax(logits / T), T fitted on the validation split after training; '
            'ECE: top-label expected calibration error, 15 equal-width bins. The reliability diagram shows the '
            'probabilities at T.</p>')
    if calibration.get("at_bound"):
        note += ('<p class="note">T stopped at a bound of its range: the validation split was too small or too easy '
                 '(every cell right by a wide margin) to pin it down.</p>')
    return table(["", "value"], rows) + note


def gallery_body(errors: Sequence[ErrorExample]) -> str:
    if not errors:
        return '<p class="note">No misclassified cell.</p>'
    def swatch(colour: str, label: str) -> str:
        return f'<span class="swatch" style="background:{colour}"></span>{label}'

    legend = (f'<p class="legend">Misclassified cells, the most confident first. Predicted: {swatch("#0c0", "cell")}'
              f'{swatch("#f00", "nucleus")}; ground truth (dashed): {swatch("#0cc", "cell")}{swatch("#ee0", "nucleus")}</p>')
    figures = "".join(
        f'<figure><img alt="{html.escape(e.name)}" src="{array_data_uri(e.thumbnail)}">'
        f'<figcaption>true: {html.escape(e.true_class)}<br>predicted: <span class="wrong">{html.escape(e.predicted_class)}'
        f'</span> ({e.probability:.3f})<br><span class="name">{html.escape(e.name).replace("/", "/<wbr>")}'
        f'</span></figcaption></figure>'
        for e in errors)
    return legend + f'<div class="gallery">{figures}</div>'


def summary_cards(results: Dict) -> str:
    cls, seg = results["classification"], results.get("segmentation") or {}
    cards = [("accuracy", cls["accuracy"]), ("macro F1", cls["macro_f1"]), ("ROC-AUC (macro)", cls["roc_auc_macro"])]
    cards += [("Dice cell", seg["dice_cyt"]), ("Dice nucleus", seg["dice_nuc"])] if seg else []
    return '<div class="cards">' + "".join(f'<div class="card"><b>{number(v, 3)}</b><span>{html.escape(k)}</span></div>'
                                           for k, v in cards) + "</div>"


def write_report(path: Path, results: Dict, plots: Dict[str, Path], errors: Sequence[ErrorExample]) -> Path:
    """Write the report.

    Args:
        path: the HTML file to write.
        results: evaluate.py's metrics.json content (segmentation, classification, normal_vs_abnormal, calibration).
        plots: PNG paths by name: "confusion_matrix", "roc_curves", "reliability".
        errors: the gallery, most confident mistakes first.

    Returns:
        path.
    """
    meta = (f'<p class="meta">{results["num_cells"]} cells of {html.escape(str(results["data_root"]))}, split '
            f'{html.escape(str(results["split"]))}; classifier given {html.escape(str(results["mask_source"]))} masks</p>')
    bodies = {
        "Segmentation": segmentation_body(results.get("segmentation")),
        "Classification": classification_body(results["classification"]),
        "Normal vs abnormal": binary_body(results.get("normal_vs_abnormal")) + grades_body(results.get("bethesda_grades")),
        "Calibration": calibration_body(results.get("calibration")),
        "Confusion matrix": plot(plots.get("confusion_matrix"), "confusion matrix"),
        "ROC curves": plot(plots.get("roc_curves"), "ROC curves"),
        "Reliability diagram": plot(plots.get("reliability"), "reliability diagram"),
        "Worst errors": gallery_body(errors),
    }
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Evaluation report</title>'
            f'<style>{STYLE}</style></head><body><main><h1>Evaluation report</h1>{meta}{summary_cards(results)}'
            '<div class="grid">' + "".join(section(title, bodies[title]) for title in SECTIONS) + "</div></main></body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
