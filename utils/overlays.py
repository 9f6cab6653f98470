"""Drawing on cell images: mask outlines and heat maps (OpenCV only, so that predict.py starts fast)."""
import cv2
import numpy as np

# RGB colours for overlay_masks.
PRED_CELL_COLOUR = (0, 255, 0)  # green
PRED_NUCLEUS_COLOUR = (255, 0, 0)  # red
TRUE_CELL_COLOUR = (0, 255, 255)  # cyan
TRUE_NUCLEUS_COLOUR = (255, 255, 0)  # yellow


def _contours(mask):
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return contours


def _draw_dashed(canvas, mask, colour, dash=4):
    """Colour every other run of ``dash`` contour pixels, so ground truth looks dashed."""
    for contour in _contours(mask):
        points = contour.reshape(-1, 2)  # (x, y) pairs, one per boundary pixel
        points = points[(np.arange(len(points)) // dash) % 2 == 0]
        canvas[points[:, 1], points[:, 0]] = colour


def overlay_masks(image_rgb, cyt_mask, nuc_mask, true_cyt=None, true_nuc=None):
    """Draw one-pixel mask outlines on a copy of an RGB image.

    Predicted cell outlines are green and predicted nuclei red (solid);
    ground-truth cells are cyan and nuclei yellow (dashed). Predictions are
    drawn last, so they win where outlines coincide.

    Args:
        image_rgb: uint8 RGB image [H,W,3] (grey [H,W] and float [0,1] images are converted).
        cyt_mask: predicted whole-cell mask [H,W], bool/0-1.
        nuc_mask: predicted nucleus mask [H,W], bool/0-1.
        true_cyt: optional ground-truth cell mask [H,W].
        true_nuc: optional ground-truth nucleus mask [H,W].

    Returns:
        New uint8 RGB array [H,W,3]; the input image is left untouched.
    """
    image = np.asarray(image_rgb)
    if image.dtype != np.uint8:
        scale = 255.0 if image.max() <= 1.0 else 1.0
        image = np.clip(image * scale, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    canvas = np.ascontiguousarray(image).copy()

    if true_cyt is not None:
        _draw_dashed(canvas, true_cyt, TRUE_CELL_COLOUR)
    if true_nuc is not None:
        _draw_dashed(canvas, true_nuc, TRUE_NUCLEUS_COLOUR)
    cv2.drawContours(canvas, _contours(cyt_mask), -1, PRED_CELL_COLOUR, thickness=1)
    cv2.drawContours(canvas, _contours(nuc_mask), -1, PRED_NUCLEUS_COLOUR, thickness=1)
    return canvas


def blend_heatmap(image_rgb, heatmap, alpha=0.45):
    """Colour a [0, 1] heat map with the jet colour map and blend it over an RGB image.

    Args:
        image_rgb: uint8 RGB image [H,W,3].
        heatmap: float map [H,W] in [0, 1] (e.g. a Grad-CAM), at the image's size.
        alpha: weight of the heat map; the image keeps 1 - alpha.

    Returns:
        New uint8 RGB array [H,W,3].
    """
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    coloured = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)  # BGR
    coloured = cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(np.asarray(image_rgb, dtype=np.uint8), 1.0 - alpha, coloured, alpha, 0.0)
