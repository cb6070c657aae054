"""The outlier autoencoder, trained on real chest radiographs, separates them from non-chest images.

Non-chest: the CT/MR/MG/dental objects in ../shared/data/dicom, pydicom-data's extremity radiographs (RG3_*) and
CT/MR slices, natural photos bundled with scikit-image, random noise. In-distribution: held-out NIH patients, plus
real chest films from other sources (CR, SIIM, RG1) that the gate must let through.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from models.imaging import Radiograph, decode_file, from_array
from models.preprocessing import preprocess
from tests.conftest import require_shared
from training import metrics, train_autoencoder

pytestmark = pytest.mark.slow

NON_CHEST_SHARED = (
    "IM-0001-0001-0001.dcm",  # CT (head/spine)
    "jpeg_lossless_with_presentation_lut.dcm",  # CT
    "OutOfBoundsOverlay.dcm",  # mammogram
    "CR-ModalitySequenceLUT.dcm",  # dental panoramic
)
NON_CHEST_PYDICOM = (
    "RG3_UNCR.dcm",  # extremity radiographs
    "RG3_UNCI.dcm",
    "RG3_J2KR.dcm",
    "CT_small.dcm",
    "MR_small.dcm",
    "MR2_UNCR.dcm",
)
SKIMAGE_PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "coins", "moon", "page", "text",
    "rocket", "brick", "grass", "gravel", "clock", "hubble_deep_field", "immunohistochemistry", "retina",
)  # fmt: skip
FOREIGN_CHEST_FILMS = ("CR-MONO1-10-chest.dcm", "siim_cr_chest_jpeg_baseline.dcm")
FOREIGN_CHEST_PYDICOM = ("RG1_UNCR.dcm", "RG1_J2KR.dcm")


def _photos() -> list[Radiograph]:
    import skimage.data

    photos = []
    for name in SKIMAGE_PHOTOS:
        pixels = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)  # bundled in the wheel: no download
        if pixels.ndim == 3:
            pixels = pixels[..., :3].mean(axis=-1)
        pixels = (pixels - pixels.min()) / max(pixels.max() - pixels.min(), 1e-9)
        photos.append(from_array(pixels.astype(np.float32)))
    return photos


def _other_modalities(shared) -> list[Radiograph]:
    images = [decode_file(shared / "dicom" / name) for name in NON_CHEST_SHARED]
    return images + [decode_file(get_testdata_file(name, download=False)) for name in NON_CHEST_PYDICOM]


def _non_chest(shared) -> list[Radiograph]:
    images = _other_modalities(shared) + _photos()
    rng = np.random.default_rng(0)
    images += [from_array(rng.random((256, 256), dtype=np.float32)) for _ in range(4)]
    images += [from_array(rng.normal(0.5, 0.15, (300, 200)).clip(0, 1).astype(np.float32)) for _ in range(2)]
    return images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    csv = require_shared("nih1000", "Data_Entry_subset.csv")
    out = tmp_path_factory.mktemp("autoencoder")
    args = train_autoencoder.get_args_parser().parse_args(
        ["--data", f"nih:{csv}", "--test-fraction", "0.25", "--val-fraction", "0.15", "--input-size", "64",
         "--epochs", "12", "--threads", "2", "--quiet", "--output-dir", str(out)]
    )  # fmt: skip
    return train_autoencoder.main(args), csv


def _scores(result: dict, images: list) -> np.ndarray:
    x = torch.from_numpy(np.stack([preprocess(image, result["spec"]) for image in images]))
    with torch.no_grad():
        return result["model"].reconstruction_error(x).numpy()


def test_outlier_auroc_against_non_chest_images(trained) -> None:
    result, csv = trained
    from training import datasets

    splits = datasets.patient_split(datasets.nih_chestxray14(csv, csv.parent), fractions=(0.6, 0.15, 0.25), seed=0)
    held_out = [splits["test"].load(i) for i in range(len(splits["test"]))]
    shared = csv.parents[1]
    chest = _scores(result, held_out)
    outliers = _scores(result, _non_chest(shared))
    labels = np.r_[np.zeros(chest.size), np.ones(outliers.size)]
    auroc = metrics.auroc(labels, np.r_[chest, outliers])
    threshold = result["outlier"]["threshold"]
    print(f"outlier AUROC {auroc:.3f}; flagged {np.mean(outliers > threshold):.0%} of non-chest, "
          f"{np.mean(chest > threshold):.1%} of held-out chest")  # fmt: skip
    assert auroc >= 0.95
    assert np.mean(chest > threshold) <= 0.05  # the gate must not reject real chest radiographs
    assert np.mean(outliers > threshold) >= 2 / 3
    # every CT/MR/mammogram/dental/extremity object is stopped at the operating threshold
    assert (_scores(result, _other_modalities(shared)) > threshold).all()


def test_chest_films_from_elsewhere_pass_the_gate(trained) -> None:
    result, csv = trained
    shared = csv.parents[1]
    films = [decode_file(shared / "dicom" / name) for name in FOREIGN_CHEST_FILMS]
    films += [decode_file(get_testdata_file(name, download=False)) for name in FOREIGN_CHEST_PYDICOM]
    scores = _scores(result, films)
    assert (scores <= result["outlier"]["threshold"]).all(), scores


def test_inverted_film_is_flagged(trained) -> None:
    """A MONOCHROME1 tag on MONOCHROME2 pixels shows a negative film: not something to score silently."""
    result, csv = trained
    negative = decode_file(csv.parents[1] / "dicom" / "siim_cr_chest_fake_monochrome1.dcm")
    assert _scores(result, [negative])[0] > result["outlier"]["threshold"]
