"""A generated cluster image of the demo set (tools/demo_data.py): where its cells go, and the image they are
painted on.

Sparse and crowded clusters: most cluster images are sparse, 2-4 cells that never overlap (their
bounding disks keep a gap). Every ``crowded_every``-th cluster image (default 3) is crowded instead, for the
field-of-view mode that must separate touching and overlapping cells: cluster ids 002, 002 + n, 002 + 2n, ...
for n = crowded_every (every cluster for n = 1, none for n = 0), so with 2 or more clusters per class every
class has one. A crowded image holds one clump of 4-7 cells grown from a cell near the image centre: each
new cell joins a random cell of the clump at a centre distance of 0.6-1.0 times the sum of their mean radii
(and no closer than 0.6 to any other cell), so its outline overlaps or touches (within TOUCH_PX) that cell's.
Nuclei stay visible: a position is rejected when a nucleus (or koilocyte halo) would come within
NUCLEUS_CLEARANCE px of another cell's outline, so every nucleus lies in its own cell only and no two nuclei
touch; a cell with no such position after CLUMP_PLACEMENT_TRIES is dropped. Cells are painted one over the
other with translucent cytoplasm, so overlaps look darker. Every cell keeps its whole polygon in its
``_cytCC.dat`` (polygons of overlapping cells overlap) and its CROPPED crop may show parts of a neighbour.
"""
import cv2
import numpy as np

from tools.demo_cells import draw_cell, moved, sample_cell, smooth_noise

EDGE_MARGIN = 6  # px between a cell and the image border
CELL_GAP = 4  # px between neighbouring cells' bounding disks (each widened by EDGE_MARGIN) in a sparse cluster
PLACEMENT_TRIES = 10
CLUMP_DISTANCE = (0.6, 1.0)  # centre distance of neighbours in a clump / sum of their mean radii
TOUCH_PX = 2.0  # a clump cell comes at least this close to (or overlaps) the cell it joins
NUCLEUS_CLEARANCE = 2.0  # px between a nucleus (or halo) and any other cell's outline, so none is hidden
CLUMP_PLACEMENT_TRIES = 40  # clump positions are rejected more often than sparse ones


def centre_bounds(cell, cluster_size):
    """(low, high) x, y of the centres that keep the cell EDGE_MARGIN inside the image."""
    width, height = cluster_size
    extent = cell.extent + EDGE_MARGIN
    return np.array([extent, extent]), np.array([width - extent, height - extent])


def sparse_position(rng, cell, placed, cluster_size):
    """The cell anywhere in the image, clear of the others' bounding disks; None if no room was found."""
    low, high = centre_bounds(cell, cluster_size)
    for _ in range(PLACEMENT_TRIES):
        centre = rng.uniform(low, high)
        if all(np.linalg.norm(centre - other.centre) >= cell.extent + other.extent + 2 * EDGE_MARGIN + CELL_GAP
               for other in placed):
            return moved(cell, centre)
    return None


def signed_distances(polygon, points):
    """Distance of each point from the polygon's outline: positive inside, negative outside."""
    contour = polygon.astype(np.float32)
    return np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), True) for x, y in points])


def touches(cell, other):
    """Whether the outlines overlap or come within TOUCH_PX of each other (vertex distances)."""
    return max(signed_distances(other.cyt_polygon, cell.cyt_polygon).max(),
               signed_distances(cell.cyt_polygon, other.cyt_polygon).max()) >= -TOUCH_PX


def nucleus_uncovered(cell, other):
    """Whether cell's nucleus and halo keep NUCLEUS_CLEARANCE px outside other's outline."""
    if np.linalg.norm(cell.centre - other.centre) > cell.extent + other.extent + NUCLEUS_CLEARANCE:
        return True  # bounding disks apart: nothing to test
    for core in (cell.nuc_polygon, cell.halo_polygon):
        # Both directions: a sharp corner of the other cell could poke between two nucleus vertices.
        if core is not None and (signed_distances(other.cyt_polygon, core).max() > -NUCLEUS_CLEARANCE
                                 or signed_distances(core, other.cyt_polygon).max() >= 0):
            return False
    return True


def clump_position(rng, cell, placed, cluster_size):
    """The cell overlapping or touching a random cell of the clump, every nucleus left uncovered; None if no room."""
    low, high = centre_bounds(cell, cluster_size)
    if not placed:  # the clump starts in the middle half of the image, so it has room to grow on every side
        return moved(cell, rng.uniform(low + (high - low) / 4, high - (high - low) / 4))
    for _ in range(CLUMP_PLACEMENT_TRIES):
        anchor = placed[rng.integers(len(placed))]
        angle = rng.uniform(0, 2 * np.pi)
        distance = rng.uniform(*CLUMP_DISTANCE) * (anchor.radius + cell.radius)
        centre = anchor.centre + distance * np.array([np.cos(angle), np.sin(angle)])
        if (centre < low).any() or (centre > high).any() or any(
                np.linalg.norm(centre - other.centre) < CLUMP_DISTANCE[0] * (other.radius + cell.radius)
                for other in placed):
            continue
        candidate = moved(cell, centre)
        if touches(candidate, anchor) and all(
                nucleus_uncovered(candidate, other) and nucleus_uncovered(other, candidate) for other in placed):
            return candidate
    return None


def place_cells(rng, morph, n_cells, cluster_size, crowded=False):
    """Up to n_cells cells, each at a rejection-sampled position (see the module docstring); a cell with no room
    is dropped. Sparse cells never overlap; crowded ones grow one clump of touching and overlapping cells."""
    find_position = clump_position if crowded else sparse_position
    cells = []
    for _ in range(n_cells):
        cell = find_position(rng, sample_cell(rng, morph), cells, cluster_size)
        if cell is not None:
            cells.append(cell)
    return cells


def render_cluster(rng, morph, cluster_size, n_cells, crowded=False):
    """Return (uint8 RGB image of shape (height, width, 3), list of Cell); later cells are painted over earlier ones."""
    width, height = cluster_size
    shape = (height, width)
    background = np.array([228, 225, 216]) + rng.uniform(-6, 6, 3)
    image = (background + smooth_noise(rng, shape, 48)[..., None] * rng.uniform(3, 7)
             + smooth_noise(rng, shape, 64)[..., None] * np.array([2, -1, 1])).astype(np.float32)
    cells = place_cells(rng, morph, n_cells, cluster_size, crowded)
    for cell in cells:
        draw_cell(image, cell, rng)
    image = image * rng.uniform(0.95, 1.05, 3) + rng.uniform(-8, 8)  # per-slide stain and exposure
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.8)  # slight defocus
    image += rng.normal(0, 2, image.shape)  # sensor noise
    return np.clip(np.round(image), 0, 255).astype(np.uint8), cells
