from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.labels import PHANTOM_FINDINGS
from models.phantoms import LOCALISED_FINDINGS, Phantom, make_phantom, phantom_set

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _phantom(seed: int, findings: tuple[str, ...] = (), size: int = 96) -> Phantom:
    return make_phantom(np.random.default_rng(seed), size=size, findings=findings)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_phantom_pixels_are_float32_in_unit_range(size: int) -> None:
    phantom = _phantom(0, PHANTOM_FINDINGS, size=size)
    assert phantom.pixels.shape == (size, size)
    assert phantom.pixels.dtype == np.float32
    assert 0.0 <= phantom.pixels.min() and phantom.pixels.max() <= 1.0
    assert phantom.pixels.std() > 0.1  # an image, not a flat field
    assert phantom.lung_mask.shape == (size, size) and phantom.lung_mask.dtype == bool
    assert 0.1 < phantom.lung_mask.mean() < 0.6


def test_lungs_are_dark_and_mediastinum_bright() -> None:
    phantom = _phantom(1, size=128)
    lungs = phantom.pixels[phantom.lung_mask].mean()
    spine = phantom.pixels[30:90, 62:66].mean()
    assert lungs + 0.15 < spine


def test_phantom_set_shapes_and_labels_match_boxes() -> None:
    images, labels, boxes = phantom_set(24, size=48, seed=5, prevalence=0.5)
    assert images.shape == (24, 48, 48) and images.dtype == np.float32
    assert labels.shape == (24, len(PHANTOM_FINDINGS)) and labels.dtype == np.float32
    assert set(np.unique(labels)) <= {0.0, 1.0}
    assert 0.2 < labels.mean() < 0.8
    assert len(boxes) == 24
    for row, image_boxes in zip(labels, boxes, strict=True):
        present = {name for name, flag in zip(PHANTOM_FINDINGS, row, strict=True) if flag}
        assert set(image_boxes) == present & set(LOCALISED_FINDINGS)


def test_phantom_set_is_deterministic_for_a_seed() -> None:
    first = phantom_set(6, size=40, seed=11)
    again = phantom_set(6, size=40, seed=11)
    other = phantom_set(6, size=40, seed=12)
    longer = phantom_set(9, size=40, seed=11)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[2] == again[2]
    assert not np.array_equal(first[0], other[0])
    np.testing.assert_array_equal(first[0], longer[0][:6])  # image i does not depend on n


def test_prevalence_extremes() -> None:
    _, none, boxes = phantom_set(5, size=32, seed=0, prevalence=0.0)
    _, every, _ = phantom_set(5, size=32, seed=0, prevalence=1.0)
    assert none.sum() == 0 and all(b == {} for b in boxes)
    assert every.min() == 1.0


def test_make_phantom_reports_the_requested_findings() -> None:
    phantom = _phantom(3, ("Mass", "Effusion"))
    assert phantom.findings == {name: name in ("Mass", "Effusion") for name in PHANTOM_FINDINGS}
    assert set(phantom.boxes) == {"Mass", "Effusion"}


def test_unknown_finding_is_rejected() -> None:
    with pytest.raises(ValueError, match="Fracture"):
        _phantom(0, ("Fracture",))


@pytest.mark.parametrize("seed", range(12))
def test_boxes_lie_inside_the_image_and_nodules_inside_the_lungs(seed: int) -> None:
    size = 96
    phantom = _phantom(seed, PHANTOM_FINDINGS, size=size)
    assert set(phantom.boxes) == set(LOCALISED_FINDINGS)
    for name, (y0, x0, y1, x1) in phantom.boxes.items():
        assert 0 <= y0 < y1 <= size and 0 <= x0 < x1 <= size, name
    for name in ("Nodule", "Mass"):
        y0, x0, y1, x1 = phantom.boxes[name]
        assert phantom.lung_mask[(y0 + y1) // 2, (x0 + x1) // 2], f"{name} centre outside the lungs"
        # the round opacity fills pi/4 of its box; it lies in the lungs, its box corners may not
        assert phantom.lung_mask[y0:y1, x0:x1].mean() >= 0.7, name
    y0, x0, y1, x1 = phantom.boxes["Nodule"]
    assert max(y1 - y0, x1 - x0) <= 0.1 * size
    y0, x0, y1, x1 = phantom.boxes["Mass"]
    assert max(y1 - y0, x1 - x0) >= 0.09 * size


@pytest.mark.parametrize("seed", range(10))
def test_cardiothoracic_ratio_marks_cardiomegaly(seed: int) -> None:
    assert _phantom(seed, ("Cardiomegaly",), size=48).cardiothoracic_ratio > 0.55
    assert _phantom(seed, ("Nodule", "Effusion"), size=48).cardiothoracic_ratio < 0.5


def test_cardiomegaly_widens_the_bright_heart_shadow() -> None:
    for seed in range(4):
        normal, big = _phantom(seed, size=64), _phantom(seed, ("Cardiomegaly",), size=64)
        # same patient and film: the larger heart hides lung, so the lung fields shrink and the film brightens
        assert big.lung_mask.sum() < normal.lung_mask.sum() * 0.95
        assert big.pixels.mean() > normal.pixels.mean()


@pytest.mark.parametrize(
    "finding, brighter",
    [("Nodule", True), ("Mass", True), ("Consolidation", True), ("Effusion", True), ("Pneumothorax", False)],
)
@pytest.mark.parametrize("seed", range(6))
def test_finding_changes_its_box_against_the_same_phantom_without_it(seed: int, finding: str, brighter: bool) -> None:
    with_it = _phantom(seed, (finding,))
    without = _phantom(seed)  # same seed: same patient, film and noise
    y0, x0, y1, x1 = with_it.boxes[finding]
    inside = with_it.pixels[y0:y1, x0:x1].mean() - without.pixels[y0:y1, x0:x1].mean()
    if brighter:
        assert inside > 0.02
    else:
        assert inside < -0.01
    # the rest of the film is the same patient (noise differs a little where the signal differs)
    outside = np.ones_like(with_it.lung_mask)
    outside[max(0, y0 - 3) : y1 + 3, max(0, x0 - 3) : x1 + 3] = False
    assert np.abs(with_it.pixels - without.pixels)[outside].mean() < 0.01


def test_importing_phantoms_does_not_import_torch() -> None:
    code = "import sys, models.phantoms; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
