"""Heatmap overlays: evidence lands where the CAM is positive, on the film's own geometry."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from models.preprocessing import PreprocessSpec
from service.heatmaps import display_size, evidence_map, film_for_display, overlay, render_overlay


def test_display_size_bounds() -> None:
    assert display_size(2048, 1024, 512) == (512, 256)
    assert display_size(64, 64, 512) == (256, 256)  # small films are enlarged
    assert display_size(300, 400, 512) == (300, 400)


def test_evidence_follows_the_positive_cam_cell_through_letterboxing() -> None:
    spec = PreprocessSpec(size=64, resize="letterbox")
    cam = np.full((4, 4), -2.0, dtype=np.float32)
    cam[1, 3] = 3.0  # right-hand cell, second row, of the square model input
    evidence = evidence_map(cam, (200, 100), spec)  # a tall film: the model saw it with side padding
    assert evidence.shape == (200, 100) and evidence.max() == 1.0 and evidence.min() == 0.0
    peak_y, peak_x = np.unravel_index(np.argmax(evidence), evidence.shape)
    assert peak_x > 50 and 25 <= peak_y <= 125


def test_no_positive_evidence_leaves_the_film_untouched() -> None:
    film = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    rgb = overlay(film, evidence_map(np.full((4, 4), -1.0, np.float32), film.shape, PreprocessSpec(size=64)))
    assert np.array_equal(rgb[..., 0], (film * 255).round().astype(np.uint8))


def test_render_overlay_uses_the_film_geometry_not_the_display_size() -> None:
    spec = PreprocessSpec(size=64)
    cam = np.full((4, 4), -1.0, np.float32)
    cam[0, 3] = 2.0  # top right cell of the model input
    display = np.zeros((256, 128), np.float32)  # a 2:1 film shown at 256 x 128
    png = render_overlay(display, cam, spec, film_shape=(2048, 1024))
    rgb = np.asarray(Image.open(io.BytesIO(png)))
    hot_y, hot_x = np.unravel_index(np.argmax(rgb[..., 0]), rgb.shape[:2])
    assert hot_x > 64 and hot_y < 80


def test_render_overlay_is_an_rgb_png_at_display_size() -> None:
    film = film_for_display(np.random.default_rng(0).random((1000, 800), dtype=np.float32), 512)
    png = render_overlay(film, np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32), PreprocessSpec(size=64))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (410, 512)
