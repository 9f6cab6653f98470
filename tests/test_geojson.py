"""Behaviour of tools/geojson.py: mask outlines in pixel-edge coordinates and QuPath cell Features."""
import json
import uuid

import cv2
import numpy as np
import pytest
from skimage.draw import polygon as fill_polygon

from tools.geojson import (
    cell_feature,
    closed_ring,
    feature_collection,
    mask_to_polygon,
    signed_area,
    write_geojson,
)


def corners(ring):
    return {tuple(point) for point in ring}


def test_square_mask_gives_the_corners_of_its_pixels():
    mask = np.zeros((10, 12), bool)
    mask[3:5, 2:6] = True  # rows 3..4, columns 2..5
    ring = mask_to_polygon(mask)
    assert len(ring) == 5 and ring[0] == ring[-1]
    assert corners(ring) == {(2.0, 3.0), (6.0, 3.0), (6.0, 5.0), (2.0, 5.0)}


def test_wide_short_mask_gives_a_ring_wide_in_x():
    mask = np.zeros((20, 60), bool)
    mask[10:13, 5:45] = True
    points = np.array(mask_to_polygon(mask))
    assert np.ptp(points[:, 0]) == 40 and np.ptp(points[:, 1]) == 3


def test_offset_moves_every_point():
    mask = np.zeros((10, 12), bool)
    mask[3:5, 2:6] = True
    moved = np.array(mask_to_polygon(mask, offset=(100, 200)))
    assert np.array_equal(moved, np.array(mask_to_polygon(mask)) + [100, 200])


def test_empty_mask_gives_none():
    assert mask_to_polygon(np.zeros((8, 8), bool)) is None


def test_ring_is_counter_clockwise_and_takes_the_largest_component():
    mask = np.zeros((30, 30), bool)
    mask[2:4, 2:4] = True  # a 4-pixel speck
    mask[10:25, 8:20] = True
    ring = np.array(mask_to_polygon(mask))
    assert signed_area(ring[:-1]) > 0
    assert ring[:, 0].min() == 8 and ring[:, 1].min() == 10


def test_concave_outline_follows_pixel_edges_exactly():
    mask = np.zeros((8, 8), bool)
    mask[1:5, 1:3] = True
    mask[3:5, 3:5] = True  # an L: one concave corner at (3, 3)
    ring = mask_to_polygon(mask, simplify_px=0)
    assert abs(signed_area(np.array(ring[:-1]))) == mask.sum()
    assert (3.0, 3.0) in corners(ring)


def test_disc_polygon_rasterises_back_to_the_disc():
    rows, cols = np.mgrid[:200, :200]
    disc = (rows - 90) ** 2 + (cols - 110) ** 2 < 40 ** 2
    ring = np.array(mask_to_polygon(disc))
    assert len(ring) < len(mask_to_polygon(disc, simplify_px=0))  # simplified: fewer points than every pixel corner
    centres = ring - 0.5  # pixel-edge -> pixel-centre coordinates, which fillPoly draws in
    drawn = np.zeros(disc.shape, np.uint8)
    cv2.fillPoly(drawn, [np.round(centres * 16).astype(np.int32)], 1, shift=4)
    drawn = drawn.astype(bool)
    assert (drawn & disc).sum() / (drawn | disc).sum() > 0.95
    # A centre-inside fill (skimage) gives the disc back pixel for pixel: simplification stays within half a pixel
    exact = np.zeros(disc.shape, bool)
    exact[fill_polygon(centres[:, 1], centres[:, 0], disc.shape)] = True
    assert np.array_equal(exact, disc)


def test_closed_ring_closes_and_orients_points():
    clockwise = np.array([[0, 0], [0, 4], [4, 4], [4, 0]], float)  # negative shoelace area
    ring = closed_ring(clockwise)
    assert ring[0] == ring[-1] and len(ring) == 5 and signed_area(np.array(ring[:-1])) == 16
    with pytest.raises(ValueError):
        closed_ring([[0, 0], [1, 1]])


def square_ring(x0, y0, side):
    return [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]


def test_feature_has_exactly_the_qupath_cell_keys():
    feature = cell_feature(square_ring(0, 0, 10), square_ring(3, 3, 4), class_name="Koilocytotic",
                           class_color=np.array([200, 0, 0]), measurements={"area": 100, "n_c_ratio": 0.16})
    assert set(feature) == {"type", "id", "geometry", "nucleusGeometry", "properties"}
    assert feature["type"] == "Feature" and uuid.UUID(feature["id"])
    assert feature["geometry"] == {"type": "Polygon", "coordinates": [square_ring(0, 0, 10)]}
    assert feature["nucleusGeometry"]["coordinates"] == [square_ring(3, 3, 4)]
    properties = feature["properties"]
    assert set(properties) == {"objectType", "classification", "measurements"}
    assert properties["objectType"] == "cell"
    assert properties["classification"] == {"name": "Koilocytotic", "color": [200, 0, 0]}
    assert all(type(v) is int for v in properties["classification"]["color"])
    assert properties["measurements"] == {"area": 100.0, "n_c_ratio": 0.16}


def test_feature_leaves_out_what_it_does_not_have():
    feature = cell_feature(square_ring(0, 0, 10), measurements={"area": 100.0, "bad": float("nan")})
    assert "nucleusGeometry" not in feature and "classification" not in feature["properties"]
    assert feature["properties"]["measurements"] == {"area": 100.0}
    assert cell_feature(square_ring(0, 0, 10))["id"] != cell_feature(square_ring(0, 0, 10))["id"]
    with pytest.raises(ValueError):
        cell_feature(square_ring(0, 0, 10), class_name="x", class_color=[0, 300, 0])


def test_geojson_file_round_trips(tmp_path):
    mask = np.zeros((40, 40), bool)
    mask[5:30, 8:20] = True
    features = [cell_feature(mask_to_polygon(mask), class_name="cell", class_color=(1, 2, 3),
                             measurements={"area": float(mask.sum())}, object_id=str(uuid.uuid4())),
                cell_feature(square_ring(0, 0, 3))]
    path = tmp_path / "cells.geojson"
    write_geojson(path, features)
    assert json.loads(path.read_text()) == feature_collection(features)
    assert json.loads(path.read_text())["type"] == "FeatureCollection"
    assert [p.name for p in tmp_path.iterdir()] == ["cells.geojson"]  # no temporary file left behind
