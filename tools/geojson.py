"""Per-cell results as GeoJSON that QuPath imports as cell objects (File > Import objects, or drag and drop).

QuPath's conventions (qupath-core PathObjectTypeAdapters, v0.4+), which this module follows:
  {"type": "Feature", "id": "<uuid>",
   "geometry": {"type": "Polygon", "coordinates": [ring]},          the cell boundary
   "nucleusGeometry": {"type": "Polygon", "coordinates": [ring]},   beside "geometry", NOT inside "properties":
                                                                    QuPath reads and writes it there
   "properties": {"objectType": "cell",
                  "classification": {"name": str, "color": [r, g, b]},
                  "measurements": {name: number}}}
Keys without a value (no nucleus, no class, no measurement) are left out, as QuPath does.

Coordinates: x = column, y = row, in pixels of the full image, origin at the top-left CORNER of the top-left
pixel (QuPath's convention: pixel (c, r) covers [c, c+1) x [r, r+1)). A mask's outline therefore runs along pixel
edges: a pixel-aligned square of columns 2..5 and rows 3..4 becomes the ring (2, 3) (6, 3) (6, 5) (2, 5). A polygon
in pixel-CENTRE coordinates (cv2.findContours, cv2.fillPoly) moves by +0.5 to land on the same pixels.
Rings are closed (first point repeated) and counter-clockwise by the signed-area (shoelace) formula on the numbers
as written, RFC 7946's rule for exterior rings; on screen, where y points down, they look clockwise.
"""
import json
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import cv2
import numpy as np

from utils.files import written_atomically

Ring = List[List[float]]
PolygonLike = Union[Ring, np.ndarray]  # a ring, or [N, 2] x, y points (closed or not)
SIMPLIFY_PX = 0.5  # cv2.approxPolyDP tolerance: drops the staircase of pixel edges, keeps the shape within half a pixel


def signed_area(points: np.ndarray) -> float:
    """Shoelace area of [N, 2] x, y points: positive when counter-clockwise in a y-up frame."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def closed_ring(points: PolygonLike) -> Ring:
    """[N, 2] x, y points as a GeoJSON exterior ring: counter-clockwise, first point repeated at the end.

    Args:
        points: [N, 2] array or list of [x, y], N >= 3 distinct points, closed or not.

    Returns:
        list of [x, y] floats, N + 1 long.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) > 1 and np.array_equal(points[0], points[-1]):
        points = points[:-1]
    if len(points) < 3:
        raise ValueError(f"a polygon needs at least 3 points, got {len(points)}")
    if signed_area(points) < 0:
        points = points[::-1]
    return [[float(x), float(y)] for x, y in np.vstack([points, points[:1]])]


def largest_component_box(mask: np.ndarray):
    """The largest 8-connected component of `mask`, cut to its bounding box, and the box's (x0, y0)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count < 2:
        return None, (0, 0)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x0, y0, width, height = stats[largest, :4]
    return labels[y0:y0 + height, x0:x0 + width] == largest, (int(x0), int(y0))


def pixel_edge_outline(component: np.ndarray) -> np.ndarray:
    """Outer boundary of one component along pixel edges, as [N, 2] int points on a doubled lattice.

    cv2.findContours traces pixel centres, half a pixel inside the true outline. On a lattice of doubled
    resolution the closed pixel squares become point sets whose outer points lie exactly on the pixel edges:
    upsample x2 and grow one lattice step right and down, so pixel c spans lattice points 2c..2c+2.
    """
    lattice = np.kron(component.astype(np.uint8), np.ones((2, 2), np.uint8))
    lattice = cv2.dilate(np.pad(lattice, ((0, 1), (0, 1))), np.ones((2, 2), np.uint8), anchor=(1, 1))
    contours, _ = cv2.findContours(lattice, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = max(contours, key=len)[:, 0, :]  # [N, 2] x, y
    # The tracer cuts each concave corner with a diagonal step; put back the pixel corner it skipped (the
    # neighbouring lattice point with both coordinates even)
    following = np.roll(points, -1, axis=0)
    diagonal = np.flatnonzero((points[:, 0] != following[:, 0]) & (points[:, 1] != following[:, 1]))
    first, second = points[diagonal], following[diagonal]
    corners = np.where((first[:, 0] % 2 == 0)[:, None],
                       np.stack([first[:, 0], second[:, 1]], 1), np.stack([second[:, 0], first[:, 1]], 1))
    return np.insert(points, diagonal + 1, corners, axis=0)


def mask_to_polygon(mask: np.ndarray, offset=(0, 0), simplify_px: float = SIMPLIFY_PX) -> Optional[Ring]:
    """Outline of the largest component of a mask as a GeoJSON ring in pixel-edge image coordinates.

    Holes are ignored (the outer boundary only); 8-connected pieces count as one component.

    Args:
        mask: bool [H, W].
        offset: (x0, y0) added to every point, e.g. where a crop sits in the whole image.
        simplify_px: approxPolyDP tolerance in pixels; 0 keeps every pixel corner.

    Returns:
        closed counter-clockwise ring of [x, y] floats (module docstring), or None for an empty mask.
    """
    component, (x0, y0) = largest_component_box(np.asarray(mask))
    if component is None:
        return None
    outline = pixel_edge_outline(component).reshape(-1, 1, 2).astype(np.int32)
    # A tiny tolerance still drops the points in the middle of straight runs
    simplified = cv2.approxPolyDP(outline, max(2 * simplify_px, 0.01), closed=True)
    if len(simplified) < 3:  # a shape thinner than the tolerance would collapse to a line
        simplified = cv2.approxPolyDP(outline, 0.01, closed=True)
    points = simplified[:, 0, :] / 2.0 + np.array([x0 + offset[0], y0 + offset[1]], np.float64)
    return closed_ring(points)


def polygon_geometry(polygon: PolygonLike) -> Dict:
    return {"type": "Polygon", "coordinates": [closed_ring(polygon)]}


def rgb_list(color: Sequence[int]) -> List[int]:
    rgb = [int(v) for v in color]
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"a class colour is [r, g, b] in 0..255, got {list(color)}")
    return rgb


def cell_feature(cell_polygon: PolygonLike, nucleus_polygon: Optional[PolygonLike] = None,
                 class_name: Optional[str] = None, class_color: Optional[Sequence[int]] = None,
                 measurements: Optional[Dict[str, float]] = None, object_id: Optional[str] = None) -> Dict:
    """One cell as a QuPath GeoJSON Feature (module docstring for the keys).

    Args:
        cell_polygon: ring or [N, 2] x, y points of the cell boundary, pixel-edge image coordinates.
        nucleus_polygon: the same for its nucleus, or None.
        class_name: QuPath class name, or None for an unclassified cell.
        class_color: [r, g, b] 0..255 shown for the class; only with class_name.
        measurements: name -> number; values that are not finite are left out (JSON has no NaN).
        object_id: the Feature id; a new random UUID (what QuPath writes) when None.

    Returns:
        dict ready for json.dump.
    """
    properties: Dict = {"objectType": "cell"}
    if class_name is not None:
        properties["classification"] = {"name": str(class_name)}
        if class_color is not None:
            properties["classification"]["color"] = rgb_list(class_color)
    finite = {str(k): float(v) for k, v in (measurements or {}).items() if np.isfinite(float(v))}
    if finite:
        properties["measurements"] = finite
    feature = {"type": "Feature", "id": object_id or str(uuid.uuid4()), "geometry": polygon_geometry(cell_polygon)}
    if nucleus_polygon is not None:
        feature["nucleusGeometry"] = polygon_geometry(nucleus_polygon)
    feature["properties"] = properties
    return feature


def feature_collection(features: Sequence[Dict]) -> Dict:
    return {"type": "FeatureCollection", "features": list(features)}


def write_geojson(path: Path, features: Sequence[Dict]) -> None:
    """Write features as one FeatureCollection; a crash never leaves a half-written file under `path`."""
    with written_atomically(Path(path)) as tmp_path:
        with open(tmp_path, "w", encoding="utf-8") as file:
            json.dump(feature_collection(features), file, allow_nan=False)
