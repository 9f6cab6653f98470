"""Generated cells for the review station's tests and benchmark: a screened input's <name>.geojson,
<name>_cells.csv and <name>_summary.json, written as predict.py --fields writes them (tools/fields/journal.py,
outputs.py, summary.py), with many more cells than a test may screen (100,000 take a few seconds)."""
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from tools.fields.journal import GEOJSON_HEAD, GEOJSON_TAIL, csv_line
from tools.fields.outputs import CellRecord, class_colours, csv_columns, csv_row, feature_id, predicted_class
from tools.fields.summary import CallRule, summarise_cells
from tools.geojson import closed_ring

ANGLES = np.arange(8) * np.pi / 4
UNIT_OCTAGON = closed_ring(np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1))  # counter-clockwise, closed


def octagon(x: float, y: float, radius: float):
    """A closed octagonal ring (tools/geojson.py's orientation), built without numpy: 100,000 take seconds."""
    return [[round(x + radius * ux, 1), round(y + radius * uy, 1)] for ux, uy in UNIT_OCTAGON]


def feature_text(record: CellRecord, name: str, number: int, class_names, colours) -> str:
    """What feature_json writes for the record, built directly from rings that are already closed and
    counter-clockwise (tools/geojson.closed_ring, checking them again, would be most of the time of 100,000 cells);
    tests/test_review_cells.py checks that both agree."""
    class_name = predicted_class(record, class_names)
    properties = {"objectType": "cell", "classification": {"name": class_name, "color": list(colours[class_name])},
                  "measurements": {k: float(v) for k, v in record.measurements.items()}}
    feature = {"type": "Feature", "id": feature_id(name, number),
               "geometry": {"type": "Polygon", "coordinates": [record.outline]},
               "nucleusGeometry": {"type": "Polygon", "coordinates": [record.nucleus]}, "properties": properties}
    properties["nucleusGeometry"] = feature["nucleusGeometry"]
    return json.dumps(feature, allow_nan=False)


def write_generated_cells(output_dir: Path, name: str, count: int, side: int, input_path: Path,
                          class_names: Sequence[str] = ("abnormal_cells", "normal_cells"), seed: int = 0) -> Path:
    """`count` octagonal cells at random places of a side x side slide, classified at random; returns the stem."""
    rng = np.random.default_rng(seed)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = output_dir / name
    colours, columns = class_colours(class_names), csv_columns(class_names)
    centres = rng.uniform(20, side - 20, size=(count, 2))
    probabilities = rng.dirichlet(np.full(len(class_names), 0.3), size=count)
    with open(f"{stem}.geojson", "w") as geojson, open(f"{stem}_cells.csv", "w") as table:
        geojson.write(GEOJSON_HEAD)
        table.write(csv_line(columns))
        for number, ((x, y), probs) in enumerate(zip(centres, probabilities), start=1):
            radius = float(rng.uniform(6, 14))
            box = (int(x - radius), int(y - radius), int(x + radius) + 1, int(y + radius) + 1)
            measurements = {"cell_area_px": int(np.pi * radius ** 2), "nucleus_area_px": int(np.pi * radius ** 2 / 6),
                            "cytoplasm_area_px": int(np.pi * radius ** 2 * 5 / 6), "nc_ratio": 0.2, "cell_score": 0.9,
                            **{f"prob_{c}": float(p) for c, p in zip(class_names, probs)}}
            record = CellRecord(box, (round(float(x), 2), round(float(y), 2)), octagon(x, y, radius),
                                octagon(x, y, radius / 2.5), measurements, [float(p) for p in probs])
            geojson.write(("" if number == 1 else ",\n") + feature_text(record, name, number, class_names, colours))
            table.write(csv_line([csv_row(record, name, number, class_names).get(c, "") for c in columns]))
        geojson.write(GEOJSON_TAIL)
    rule = CallRule(min_cells=10, gallery=50)
    summary = {"input": str(input_path), "shape": [side, side], "mpp": 0.25,
               **summarise_cells(Path(f"{stem}_cells.csv"), list(class_names), rule, 0.25)}
    summary["outputs"] = {"geojson": f"{name}.geojson", "cells_csv": f"{name}_cells.csv", "report": f"{name}_report.html"}
    Path(f"{stem}_summary.json").write_text(json.dumps(summary, indent=1))
    return stem
