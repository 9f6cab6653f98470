"""<name>_report.html: one self-contained page per slide (or field) for the person who reviews it.

At the top the call and the rule that made it; then the counts per class; a thumbnail of the slide with every
cell as a dot in its class's colour and the gallery's cells numbered; then the gallery: the most suspicious
cells, most suspicious first (the order a reviewer should see them in), each cut out of the full-resolution
slide with its class, abnormal probability and place on the slide in pixels and microns. Images are embedded
(base64), so the page can be mailed or archived alone.
"""
import base64
import csv
import html
from pathlib import Path
from typing import Dict, Optional, Sequence

import cv2
import numpy as np

from tools.fields.outputs import UNCLASSIFIED_RGB, class_colours
from tools.fields.tissue import read_overview

THUMBNAIL_SIDE = 1400  # px of the thumbnail's longer side
CROP_SIDE = 160  # px of a gallery picture
CROP_CONTEXT = 1.6  # a gallery picture shows this many times the cell's box (at least CROP_MIN_PX)
CROP_MIN_PX = 96
CALL_COLOURS = {"NILM": "#2e7d32", "abnormal": "#c62828", "unsatisfactory": "#ef6c00", "not classified": "#546e7a"}

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px;margin:0 0 8px} .call{display:inline-block;padding:6px 14px;border-radius:6px;color:#fff;font-weight:600}
table{border-collapse:collapse;margin:12px 0} td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
.rule{color:#555;font-size:13px} .legend span{display:inline-block;margin-right:14px;font-size:13px}
.dot{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:4px;vertical-align:middle}
.gallery{display:flex;flex-wrap:wrap;gap:10px} .cell{width:170px;font-size:12px}
.cell img{width:160px;height:160px;border:1px solid #999;display:block}
.top{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap} .thumb{max-width:760px;width:100%;border:1px solid #999}
"""


def data_uri(image: np.ndarray, quality: int = 85) -> str:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode()


def thumbnail(reader, cells_csv: Path, gallery: Sequence[Dict], class_names, colours) -> np.ndarray:
    """The slide at THUMBNAIL_SIDE px with every cell a dot of its class's colour, gallery cells boxed and numbered."""
    px_per_dot = max(1.0, max(reader.shape) / THUMBNAIL_SIDE)
    image = read_overview(reader, px_per_dot)
    scale = image.shape[1] / reader.shape[1]
    radius = max(2, int(round(3 * min(1.0, 1000 / max(image.shape[:2])))) + 1)
    with open(cells_csv, newline="") as table:
        for row in csv.DictReader(table):
            centre = (int(float(row["centroid_x"]) * scale), int(float(row["centroid_y"]) * scale))
            cv2.circle(image, centre, radius, colours.get(row["class"], UNCLASSIFIED_RGB), -1)
    for rank, cell in enumerate(gallery, start=1):
        x, y = int(cell["x"] * scale), int(cell["y"] * scale)
        cv2.rectangle(image, (x - 8, y - 8), (x + 8, y + 8), (0, 0, 0), 1)
        cv2.putText(image, str(rank), (x + 9, y - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return image


def gallery_picture(reader, cell: Dict) -> np.ndarray:
    """The cell's surroundings at full resolution, its box drawn, resized to CROP_SIDE."""
    x0, y0, x1, y1 = cell["box"]
    side = max(CROP_MIN_PX, int(CROP_CONTEXT * max(x1 - x0, y1 - y0)))
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    top, left = cy - side // 2, cx - side // 2
    canvas = np.full((side, side, 3), 255, np.uint8)
    part = reader.read(top, left, top + side, left + side)
    dy, dx = max(0, -top), max(0, -left)
    canvas[dy:dy + part.shape[0], dx:dx + part.shape[1]] = part
    cv2.rectangle(canvas, (x0 - left, y0 - top), (x1 - left, y1 - top), (255, 0, 0), max(1, side // 120))
    return cv2.resize(canvas, (CROP_SIDE, CROP_SIDE), interpolation=cv2.INTER_AREA)


def place(cell: Dict) -> str:
    text = f"x {cell['x']:.0f}, y {cell['y']:.0f} px"
    if "x_um" in cell:
        text += f"<br>x {cell['x_um']:.1f}, y {cell['y_um']:.1f} &micro;m"
    return text


def page(name: str, summary: Dict, thumb: np.ndarray, pictures, class_names, colours) -> str:
    call = summary["call"]
    rows = [("input", html.escape(str(summary.get("input", name)))),
            ("size", f"{summary['shape'][1]} x {summary['shape'][0]} px"),
            ("microns per pixel", summary["mpp"] if summary.get("mpp") else "unknown"),
            ("tissue screened", f"{summary['tissue']['share']:.1%} of the slide ({summary['blocks']} blocks)"),
            ("cells", summary["cells"])]
    if "abnormal_per_1000" in summary:
        rows += [("abnormal cells", f"{summary['abnormal_cells']} ({summary['abnormal_per_1000']:.1f} per 1000)")]
        rows += [(f"<span class='dot' style='background:rgb{colours[c]}'></span>{html.escape(c)}", n)
                 for c, n in summary["counts"].items()]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    cards = "".join(
        f"<div class='cell'><img src='{uri}' alt='cell {cell['id']}'><b>{rank}. {html.escape(cell['class'])}</b> "
        f"p={cell['abnormal_probability']:.3f}<br>cell {cell['id']}<br>{place(cell)}</div>"
        for rank, (cell, uri) in enumerate(pictures, start=1))
    gallery = (f"<h2>The {len(pictures)} most suspicious cells</h2><div class='gallery'>{cards}</div>" if pictures else "")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(name)}: {call}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(name)}</h1>"
            f"<span class='call' style='background:{CALL_COLOURS.get(call, '#546e7a')}'>{call}</span>"
            f"<p class='rule'>Rule: {html.escape(summary['rule'])}. A screening aid, not a diagnosis.</p>"
            f"<div class='top'><table>{table}</table><img class='thumb' src='{data_uri(thumb)}' alt='the slide, every "
            f"cell a dot of its class colour, the gallery's cells numbered'></div>"
            f"{gallery}</body></html>")


def write_report(plan, summary: Dict, cells_csv: Path, output_dir: Path, class_names: Optional[Sequence[str]]) -> Path:
    """Write <name>_report.html beside the input's other outputs; returns its path."""
    colours = class_colours(class_names) if class_names else {}
    gallery = summary.get("most_suspicious", [])
    thumb = thumbnail(plan.reader, cells_csv, gallery, class_names, colours)
    pictures = [(cell, data_uri(gallery_picture(plan.reader, cell))) for cell in gallery]
    stem = Path(output_dir) / plan.name
    path = stem.with_name(f"{stem.name}_report.html")
    path.write_text(page(stem.name, summary, thumb, pictures, class_names, colours), encoding="utf-8")
    return path
