"""One generated cell of the demo set (tools/demo_data.py): its class's morphology, its outline and nucleus as
polygons, and how it is painted onto a cluster image.

Class morphology (radii in cluster pixels; ranges overlap on purpose so the task is not trivial):

- Superficial-Intermediate: large flat polygonal cell (45-60), translucent pink/orange or light cyan
  cytoplasm, tiny dark pyknotic nucleus (4-6): lowest N/C ratio.
- Parabasal: small round cell (18-26), dense blue-green cytoplasm, large round nucleus (8-11): high N/C.
- Metaplastic: medium cell (28-38) with an irregular, angular outline, darker cytoplasm, nucleus 7-10.
- Koilocytotic: medium-large cell (35-48), dark slightly irregular nucleus (7-10) inside a bright
  perinuclear cavity (halo) with a dense rim: the defining feature.
- Dyskeratotic: small-medium, often elongated cell (20-30), dense orange cytoplasm, small dark
  irregular nucleus (5-8).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

HALO_RGB = np.array([246, 246, 240], np.float32)


@dataclass(frozen=True)
class Morphology:
    cell_radius: tuple[float, float]
    cell_elongation: tuple[float, float]
    cell_irregularity: float  # amplitude of smooth lumps on the outline
    cell_polygonality: tuple[float, float]  # 0 = smooth ellipse, 1 = straight sides and corners
    nuc_radius: tuple[float, float]
    nuc_elongation: tuple[float, float]
    nuc_irregularity: float
    cyt_colours: tuple[tuple[int, int, int], ...]  # RGB, one picked per cell
    cyt_alpha: tuple[float, float]  # thin mature cells are translucent, immature ones dense
    nuc_colour: tuple[int, int, int]
    halo_scale: tuple[float, float] | None = None  # koilocyte cavity radius / nucleus radius


MORPHOLOGY = {
    "im_Superficial-Intermediate": Morphology(
        (45, 60), (1.0, 1.4), 0.04, (0.5, 0.9), (4, 6), (1.0, 1.2), 0.03,
        ((236, 160, 150), (238, 188, 140), (160, 212, 212)), (0.45, 0.6), (45, 35, 70)),
    "im_Parabasal": Morphology(
        (18, 26), (1.0, 1.15), 0.03, (0.0, 0.1), (8, 11), (1.0, 1.15), 0.03,
        ((70, 145, 150), (80, 150, 165)), (0.8, 0.9), (85, 70, 135)),
    "im_Metaplastic": Morphology(
        (28, 38), (1.0, 1.3), 0.10, (0.3, 0.6), (7, 10), (1.0, 1.25), 0.05,
        ((95, 130, 150), (110, 140, 135)), (0.75, 0.88), (70, 55, 115)),
    "im_Koilocytotic": Morphology(
        (35, 48), (1.0, 1.3), 0.06, (0.2, 0.5), (7, 10), (1.0, 1.35), 0.12,
        ((150, 180, 190), (205, 165, 175)), (0.6, 0.75), (40, 30, 70), halo_scale=(1.8, 2.3)),
    "im_Dyskeratotic": Morphology(
        (20, 30), (1.15, 1.7), 0.06, (0.1, 0.3), (5, 8), (1.2, 1.8), 0.12,
        ((225, 120, 70), (215, 100, 65)), (0.82, 0.92), (35, 25, 45)),
}


@dataclass
class Cell:
    cyt_polygon: np.ndarray  # (N, 2) x, y in cluster coordinates
    nuc_polygon: np.ndarray
    halo_polygon: np.ndarray | None
    cyt_colour: np.ndarray
    cyt_alpha: float
    nuc_colour: np.ndarray
    centre: np.ndarray = field(default_factory=lambda: np.zeros(2))  # x, y the polygons were drawn around

    @property
    def radius(self) -> float:
        """Mean distance of the outline from the centre."""
        return float(np.linalg.norm(self.cyt_polygon - self.centre, axis=1).mean())

    @property
    def extent(self) -> float:
        """Radius of the bounding disk around the centre."""
        return float(np.linalg.norm(self.cyt_polygon - self.centre, axis=1).max())


def random_polygon(rng, mean_radius, elongation=1.0, irregularity=0.05, polygonality=0.0):
    """Star-shaped polygon around (0, 0), 24-64 points. r(theta) is sampled at strictly increasing
    theta within one turn, which is what guarantees the polygon is simple."""
    n_points = int(rng.integers(24, 65))
    step = 2 * np.pi / n_points
    theta = rng.uniform(0, 2 * np.pi) + step * (np.arange(n_points) + rng.uniform(-0.35, 0.35, n_points))
    tilted = theta - rng.uniform(0, np.pi)
    stretch = np.sqrt(elongation)  # major/minor = elongation at roughly constant area
    radius = 1 / np.sqrt((np.cos(tilted) / stretch) ** 2 + (np.sin(tilted) * stretch) ** 2)
    n_sides = int(rng.integers(5, 8))
    sector = 2 * np.pi / n_sides
    corners = np.cos(np.pi / n_sides) / np.cos(np.mod(tilted, sector) - np.pi / n_sides)
    radius *= 1 - polygonality + polygonality * corners / corners.mean()
    for k in range(2, 6):  # few low harmonics: lumpy like a real membrane, not jagged
        radius *= 1 + rng.normal(0, irregularity) * 2 / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius = mean_radius * np.clip(radius, 0.5, None)
    return np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)


def fit_nucleus(rng, morph, cyt_polygon, centre):
    """Nucleus (and koilocyte halo) polygons placed off-centre but provably inside the cell."""
    nuc_shape = random_polygon(rng, rng.uniform(*morph.nuc_radius), rng.uniform(*morph.nuc_elongation),
                               morph.nuc_irregularity)
    halo_shape = None
    if morph.halo_scale is not None:
        halo_shape = random_polygon(rng, rng.uniform(*morph.halo_scale) * np.linalg.norm(nuc_shape, axis=1).max(), 1.1, 0.05)
    extent = max(np.linalg.norm(s, axis=1).max() for s in (nuc_shape, halo_shape) if s is not None)
    # Disk of radius `inner` around the centre lies in the cell; keep the nucleus' bounding disk inside it.
    inner = cv2.pointPolygonTest(cyt_polygon.astype(np.float32), tuple(map(float, centre)), True) - 2
    scale = min(1.0, inner / extent)
    offset = rng.uniform(0, 0.6) * max(inner - extent * scale, 0)
    angle = rng.uniform(0, 2 * np.pi)
    nuc_centre = centre + offset * np.array([np.cos(angle), np.sin(angle)])
    halo = None if halo_shape is None else np.round(halo_shape * scale + nuc_centre, 2)
    return np.round(nuc_shape * scale + nuc_centre, 2), halo


def sample_cell(rng, morph):
    """A cell of this morphology around (0, 0), nucleus (and halo) inside it; moved() puts it in place."""
    cyt_shape = random_polygon(rng, rng.uniform(*morph.cell_radius), rng.uniform(*morph.cell_elongation),
                               morph.cell_irregularity, rng.uniform(*morph.cell_polygonality))
    nuc_shape, halo_shape = fit_nucleus(rng, morph, cyt_shape, np.zeros(2))
    colour = np.array(morph.cyt_colours[rng.integers(len(morph.cyt_colours))], np.float32)
    return Cell(cyt_shape, nuc_shape, halo_shape, colour + rng.uniform(-12, 12, 3), rng.uniform(*morph.cyt_alpha),
                np.array(morph.nuc_colour) + rng.uniform(-8, 8, 3))


def moved(cell, centre):
    """The cell drawn around (0, 0) shifted to `centre`, polygons rounded to the 2 decimals the .dat files keep."""
    def shift(polygon):
        return None if polygon is None else np.round(polygon + centre, 2)
    return replace(cell, cyt_polygon=shift(cell.cyt_polygon), nuc_polygon=shift(cell.nuc_polygon),
                   halo_polygon=shift(cell.halo_polygon), centre=np.asarray(centre, np.float64))


def smooth_noise(rng, shape, feature_px):
    """Zero-mean, unit-std noise with blobs about feature_px wide (cheap stand-in for Perlin noise)."""
    height, width = shape
    grid = rng.standard_normal((height // feature_px + 2, width // feature_px + 2)).astype(np.float32)
    noise = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def polygon_mask(polygon, shape, origin):
    """Anti-aliased float mask in [0, 1]; 4 fractional bits keep sub-pixel vertex positions."""
    mask = np.zeros(shape, np.uint8)
    points = np.round((polygon - origin) * 16).astype(np.int32)
    cv2.fillPoly(mask, [points], 255, lineType=cv2.LINE_AA, shift=4)
    return mask.astype(np.float32) / 255


def blend(dst, colour, alpha):
    dst[:] = dst * (1 - alpha[..., None]) + colour * alpha[..., None]


def draw_cell(image, cell, rng):
    """Paint cytoplasm, optional koilocyte halo, then nucleus, in place on a float RGB image."""
    height, width = image.shape[:2]
    (x0, y0), (x1, y1) = np.floor(cell.cyt_polygon.min(0)) - 2, np.ceil(cell.cyt_polygon.max(0)) + 3
    x0, y0, x1, y1 = int(max(x0, 0)), int(max(y0, 0)), int(min(x1, width)), int(min(y1, height))
    roi, origin = image[y0:y1, x0:x1], np.array([x0, y0])
    shape = roi.shape[:2]
    cell_mask = polygon_mask(cell.cyt_polygon, shape, origin)
    depth = cv2.distanceTransform((cell_mask > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    shade = (1 - 0.25 * np.exp(-depth / 2.5)) * (1 + 0.07 * smooth_noise(rng, shape, 6))  # rim stains darker
    blend(roi, cell.cyt_colour * shade[..., None], cell.cyt_alpha * cell_mask)
    if cell.halo_polygon is not None:
        halo_mask = polygon_mask(cell.halo_polygon, shape, origin) * cell_mask
        outside = cv2.distanceTransform((halo_mask < 0.5).astype(np.uint8), cv2.DIST_L2, 3)
        # Cytoplasm pushed aside by the cavity condenses into a dense ring around it.
        rim = np.exp(-outside / 2.0) * cell_mask * (1 - halo_mask)
        roi *= (1 - 0.3 * rim)[..., None]
        blend(roi, HALO_RGB, 0.85 * halo_mask)
    nuc_mask = polygon_mask(cell.nuc_polygon, shape, origin)
    grain = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 0.8)
    chromatin = 1 + 0.18 * grain / (grain.std() + 1e-6)
    blend(roi, cell.nuc_colour * chromatin[..., None], 0.92 * nuc_mask)
