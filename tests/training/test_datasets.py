"""Dataset loaders on the real data in ../shared/data (nih1000, nih-labels, pneumoniamnist); skipped where absent."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.imaging import decode_file
from models.labels import ABNORMAL, NIH_PATHOLOGIES, PHANTOM_FINDINGS
from models.preprocessing import PreprocessSpec, preprocess
from tests.conftest import SHARED_DATA
from training.augment import AugmentConfig, RandomRadiographAugment
from training.datasets import (
    CHEXPERT_COLUMNS,
    ImageTensorDataset,
    LabelledImages,
    chexpert,
    csv_dataset,
    filter_views,
    image_folder,
    medmnist_npz,
    merge,
    nih_chestxray14,
    patient_split,
    phantom_dataset,
    positive_weights,
    preprocess_all,
)

DATA = SHARED_DATA
NIH = DATA / "nih1000"
NIH_CSV = NIH / "Data_Entry_subset.csv"
NIH_FULL_CSV = DATA / "nih-labels" / "Data_Entry_2017_v2020.csv.gz"
PNEUMONIA = DATA / "pneumoniamnist" / "pneumoniamnist.npz"

needs_nih = pytest.mark.skipif(
    not NIH_CSV.is_file(), reason=f"real NIH data not found at {NIH} (../shared/data is absent in a fresh clone)"
)
needs_pneumonia = pytest.mark.skipif(
    not PNEUMONIA.is_file(), reason=f"PneumoniaMNIST not found at {PNEUMONIA} (../shared/data is absent)"
)
needs_full_table = pytest.mark.skipif(
    not NIH_FULL_CSV.is_file(), reason=f"NIH label table not found at {NIH_FULL_CSV} (../shared/data is absent)"
)

# Per-label counts in nih1000 from the data README (and the table itself).
NIH1000_COUNTS = {
    "Effusion": 170,
    "Infiltration": 162,
    "Atelectasis": 95,
    "Cardiomegaly": 83,
    "Consolidation": 42,
    "Pneumothorax": 40,
    "Nodule": 39,
    "Emphysema": 37,
    "Mass": 35,
    "Fibrosis": 32,
    "Edema": 31,
    "Pleural_Thickening": 29,
    "Pneumonia": 11,
    "Hernia": 9,
}


@pytest.fixture(scope="module")
def nih() -> LabelledImages:
    if not NIH_CSV.is_file():
        pytest.skip(f"real NIH data not found at {NIH} (../shared/data is absent in a fresh clone)")
    return nih_chestxray14(NIH_CSV, NIH)


def _column(data: LabelledImages, name: str) -> np.ndarray:
    return data.labels[:, data.label_names.index(name)]


def _tiny(n: int = 6, k: int = 2, patients: bool = True) -> LabelledImages:
    rng = np.random.default_rng(0)
    return LabelledImages(
        [f"L{j}" for j in range(k)],
        (rng.random((n, k)) > 0.5).astype(np.float32),
        arrays=rng.integers(0, 256, (n, 16, 16), dtype=np.uint8),
        patient_ids=[f"p{i // 2}" for i in range(n)] if patients else None,
        source="tiny",
    )


# --------------------------------------------------------------------------------------------------------------
# LabelledImages basics (no data needed)
# --------------------------------------------------------------------------------------------------------------
def test_labelled_images_validates_shapes_and_values():
    images = np.zeros((3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        LabelledImages(["a", "b"], np.zeros((3, 1)), arrays=images)
    with pytest.raises(ValueError, match="0, 1, NaN"):
        LabelledImages(["a"], np.array([[0.0], [2.0], [np.nan]]), arrays=images)
    with pytest.raises(ValueError, match="exactly one"):
        LabelledImages(["a"], np.zeros((3, 1)), arrays=images, paths=["x.png"] * 3)
    with pytest.raises(ValueError, match="unique"):
        LabelledImages(["a", "a"], np.zeros((3, 2)), arrays=images)


def test_subset_select_labels_and_summary():
    data = _tiny()
    part = data.subset([4, 0])
    assert len(part) == 2
    np.testing.assert_array_equal(part.labels, data.labels[[4, 0]])
    assert list(part.patient_ids) == ["p2", "p0"]
    np.testing.assert_array_equal(part.arrays, data.arrays[[4, 0]])
    assert len(data.subset(np.arange(6) % 2 == 0)) == 3

    picked = data.select_labels(["L1", "Effusion", "L0"])
    assert picked.label_names == ("L1", "Effusion", "L0")
    np.testing.assert_array_equal(picked.labels[:, 0], data.labels[:, 1])
    assert np.isnan(picked.labels[:, 1]).all()

    summary = picked.summary()
    assert summary["n"] == 6 and summary["n_patients"] == 3 and summary["source"] == "tiny"
    assert summary["labels"]["Effusion"] == {"positive": 0, "negative": 0, "missing": 6}
    counts = summary["labels"]["L0"]
    assert counts["positive"] + counts["negative"] == 6 and counts["positive"] == int(data.labels[:, 0].sum())


def test_positive_weights_ignores_missing_and_clips():
    labels = np.array([[1, 0, np.nan], [0, 0, np.nan], [0, 0, 1], [0, 1, 0]], dtype=np.float32)
    data = LabelledImages(["a", "b", "c"], labels, arrays=np.zeros((4, 8, 8), np.uint8))
    np.testing.assert_allclose(positive_weights(data), [3.0, 3.0, 1.0])
    mostly_positive = LabelledImages(["p"], np.array([[1], [1], [1], [1], [0]]), arrays=np.zeros((5, 8, 8), np.uint8))
    np.testing.assert_allclose(positive_weights(mostly_positive), [0.25])  # the rarer negatives weigh as much
    no_positive = LabelledImages(["x"], np.zeros((5, 1)), arrays=np.zeros((5, 8, 8), np.uint8))
    assert positive_weights(no_positive)[0] == 50.0
    assert positive_weights(data, clip=(1.0, 2.0)).max() == 2.0


def test_phantom_dataset_has_abnormal_first():
    data = phantom_dataset(12, size=64, seed=1, prevalence=0.5)
    assert data.label_names == (ABNORMAL, *PHANTOM_FINDINGS)
    np.testing.assert_array_equal(data.labels[:, 0], data.labels[:, 1:].max(axis=1))
    assert data.source == "phantoms:seed=1" and data.patient_ids is None
    assert data.load(0).pixels.shape == (64, 64)


# --------------------------------------------------------------------------------------------------------------
# NIH ChestX-ray14 (nih1000)
# --------------------------------------------------------------------------------------------------------------
@needs_nih
def test_nih_counts_match_the_table(nih):
    assert len(nih) == 1000
    assert nih.label_names == (ABNORMAL, *NIH_PATHOLOGIES)
    assert not np.isnan(nih.labels).any()
    assert int(_column(nih, ABNORMAL).sum()) == 501  # 1000 - 499 "No Finding"
    for name, count in NIH1000_COUNTS.items():
        assert int(_column(nih, name).sum()) == count, name
    summary = nih.summary()
    # The data README says 295 patients; the table (and the file names) hold 264 distinct patients.
    assert summary["n_patients"] == 264
    assert summary["missing_images"] == 0 and summary["views"] == {"AP": 363, "PA": 637}
    assert all(p.is_file() and p.parent.parent.parent == NIH for p in nih.paths)


@needs_nih
def test_nih_view_filter(nih):
    pa = filter_views(nih, ["PA"])
    assert len(pa) == 637 and set(pa.view_positions) == {"PA"}
    assert len(nih_chestxray14(NIH_CSV, NIH, view_positions=["ap"])) == 363
    assert len(filter_views(nih, ["pa", "AP"])) == 1000


@needs_nih
def test_nih_drops_rows_without_images_and_counts_them():
    test_only = nih_chestxray14(NIH_CSV, NIH / "test")
    assert len(test_only) == 200 and test_only.summary()["missing_images"] == 800
    everything = nih_chestxray14(NIH_CSV, NIH / "test", require_images=False)
    assert len(everything) == 1000


@needs_nih
def test_nih_requested_labels_are_canonical_and_unknown_ones_missing():
    data = nih_chestxray14(NIH_CSV, NIH, labels=["No Finding", "effusion", "Lung Opacity"])
    assert data.label_names == ("No Finding", "Effusion", "Lung Opacity")
    assert int(data.labels[:, 0].sum()) == 499 and int(data.labels[:, 1].sum()) == 170
    assert np.isnan(data.labels[:, 2]).all()


@needs_nih
@needs_full_table
def test_nih_full_official_table_indexes_a_partial_download():
    data = nih_chestxray14(NIH_FULL_CSV, NIH)
    assert len(data) == 1000 and data.summary()["missing_images"] == 112_120 - 1000
    table = nih_chestxray14(NIH_FULL_CSV, NIH, labels=[ABNORMAL], require_images=False)
    assert len(table) == 112_120 and table.summary()["n_patients"] == 30_805


@needs_nih
def test_image_folder_labels_follow_the_folders(nih):
    train = image_folder(NIH / "train")
    assert len(train) == 600 and train.label_names == (ABNORMAL,)
    assert train.summary()["positive_class"] == "1_abnormal"
    for path, label in zip(train.paths, train.labels[:, 0], strict=True):
        assert label == (path.parent.name == "1_abnormal")
    assert int(train.labels.sum()) == 300
    with pytest.raises(ValueError, match="nested folders"):
        image_folder(NIH)  # root/{train,valid,test}/class: the caller must pick a split


@needs_nih
def test_the_one_folder_table_disagreement_follows_the_table(nih):
    table = {p.name: row for p, row in zip(nih.paths, nih.labels, strict=True)}
    disagreements = []
    for split in ("train", "valid", "test"):
        folder = image_folder(NIH / split)
        for path, label in zip(folder.paths, folder.labels[:, 0], strict=True):
            if table[path.name][0] != label:
                disagreements.append((path, label))
    assert len(disagreements) == 1
    path, folder_label = disagreements[0]
    assert path.name == "00000193_019.png" and path.parent.name == "0_normal" and folder_label == 0
    row = table[path.name]
    assert row[0] == 1  # the table (v2020) lists Pneumonia: the NIH loader reports Abnormal
    assert row[nih.label_names.index("Pneumonia")] == 1


def test_image_folder_multiclass_one_hot(tmp_path):
    rng = np.random.default_rng(0)
    from PIL import Image

    for c, name in enumerate(["covid", "normal", "pneumonia"]):
        (tmp_path / name).mkdir()
        for i in range(c + 1):
            Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "normal" / "notes.txt").write_text("not an image")
    data = image_folder(tmp_path)
    assert data.label_names == ("covid", "normal", "pneumonia")
    np.testing.assert_array_equal(data.labels.sum(axis=0), [1, 2, 3])
    np.testing.assert_array_equal(data.labels.sum(axis=1), np.ones(6))
    assert data.load(5).pixels.shape == (20, 24)


# --------------------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------------------
@needs_nih
def test_patient_split_keeps_patients_apart(nih):
    splits = patient_split(nih, seed=0)
    assert set(splits) == {"train", "val", "test"}
    patients = {name: set(part.patient_ids) for name, part in splits.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    sizes = {name: len(part) for name, part in splits.items()}
    assert sum(sizes.values()) == 1000
    # groups are whole patients (up to ~40 images), so fractions are approximate
    assert abs(sizes["train"] / 1000 - 0.7) < 0.05
    assert abs(sizes["val"] / 1000 - 0.1) < 0.05
    assert abs(sizes["test"] / 1000 - 0.2) < 0.05
    all_paths = sorted(p for part in splits.values() for p in part.paths)
    assert all_paths == sorted(nih.paths)
    assert splits["test"].summary()["split"] == {"name": "test", "seed": 0, "fractions": [0.7, 0.1, 0.2]}


@needs_nih
def test_patient_split_is_deterministic_per_seed(nih):
    first, again, other = (patient_split(nih, seed=s) for s in (3, 3, 4))
    for name in ("train", "val", "test"):
        assert first[name].paths == again[name].paths
    assert set(first["test"].patient_ids) != set(other["test"].patient_ids)


@needs_nih
def test_patient_split_zero_fraction_is_empty(nih):
    splits = patient_split(nih, fractions=(0.8, 0.0, 0.2), seed=1)
    assert len(splits["val"]) == 0 and len(splits["train"]) + len(splits["test"]) == 1000
    assert len(patient_split(nih, fractions=(1.0, 0.0, 0.0))["train"]) == 1000
    with pytest.raises(ValueError, match="summing to 1"):
        patient_split(nih, fractions=(0.5, 0.2, 0.2))


def test_patient_split_by_image_without_patient_ids():
    data = _tiny(n=100, patients=False)
    splits = patient_split(data, fractions=(0.6, 0.2, 0.2), seed=0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [60, 20, 20]


# --------------------------------------------------------------------------------------------------------------
# MedMNIST
# --------------------------------------------------------------------------------------------------------------
@needs_pneumonia
def test_pneumoniamnist_splits():
    train = medmnist_npz(PNEUMONIA, "train")
    assert len(train) == 3882 and train.label_names == ("Pneumonia",)
    assert int((train.labels == 0).sum()) == 388 and int((train.labels == 1).sum()) == 3494
    val = medmnist_npz(PNEUMONIA, "val")
    assert len(val) == 524 and int((val.labels == 0).sum()) == 135
    test = medmnist_npz(PNEUMONIA, "test")
    assert len(test) == 624 and int((test.labels == 0).sum()) == 234 and int((test.labels == 1).sum()) == 390
    assert test.source == "medmnist:pneumoniamnist:test" and test.patient_ids is None
    assert test.arrays.shape == (624, 28, 28) and test.arrays.dtype == np.uint8
    image = test.load(0).pixels
    assert image.shape == (28, 28) and 0 <= image.min() < image.max() <= 1
    with pytest.raises(ValueError, match="split"):
        medmnist_npz(PNEUMONIA, "valid")


def test_medmnist_multiclass_and_multilabel(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = tmp_path / "fake.npz"
    np.savez(path, train_images=images, train_labels=np.array([[0], [1], [2], [1], [0]]),
             test_images=images[:2], test_labels=np.array([[3], [0]]))  # fmt: skip
    data = medmnist_npz(path, "train")
    assert data.label_names == ("class_0", "class_1", "class_2", "class_3")  # classes counted over all splits
    np.testing.assert_array_equal(data.labels.argmax(axis=1), [0, 1, 2, 1, 0])
    multi = tmp_path / "multi.npz"
    np.savez(multi, val_images=images, val_labels=(rng.random((5, 3)) > 0.5).astype(np.uint8))
    assert medmnist_npz(multi, "val").label_names == ("class_0", "class_1", "class_2")


# --------------------------------------------------------------------------------------------------------------
# CSV and CheXpert tables (image files: real nih1000 PNGs)
# --------------------------------------------------------------------------------------------------------------
def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@needs_nih
def test_csv_dataset_blanks_are_missing(tmp_path, nih):
    relative = [p.relative_to(NIH).as_posix() for p in nih.paths[:4]]
    table = tmp_path / "labels.csv"
    _write_csv(
        table,
        ["path", "Effusion", "pleural thickening", "patient"],
        [
            [relative[0], "1", "", "a"],
            [relative[1], "false", "Yes", "a"],
            [relative[2], "", "0.0", "b"],
            [str(nih.paths[3]), "TRUE", "no", "c"],  # absolute paths work too
        ],
    )
    data = csv_dataset(table, NIH, patient_column="patient")
    assert data.label_names == ("Effusion", "Pleural_Thickening")
    np.testing.assert_array_equal(data.labels, np.array([[1, np.nan], [0, 1], [np.nan, 0], [1, 0]], np.float32))
    assert data.paths == nih.paths[:4] and list(data.patient_ids) == ["a", "a", "b", "c"]
    assert data.summary()["n_patients"] == 3
    assert data.load(2).pixels.shape == (64, 64)
    only = csv_dataset(table, NIH, label_columns=["Effusion"])
    assert only.label_names == ("Effusion",) and only.patient_ids is None


@needs_nih
def test_csv_dataset_bad_value_names_row_and_column(tmp_path, nih):
    relative = [p.relative_to(NIH).as_posix() for p in nih.paths[:3]]
    table = tmp_path / "labels.csv"
    _write_csv(table, ["path", "Effusion", "Mass"], [[relative[0], "1", "0"], [relative[1], "0", "1"],
                                                     [relative[2], "1", "maybe"]])  # fmt: skip
    with pytest.raises(ValueError, match=r"row 3 \(line 4\), column 'Mass'.*'maybe'"):
        csv_dataset(table, NIH)
    _write_csv(table, ["path", "Effusion"], [[relative[0], "1"], ["nowhere/missing.png", "0"]])
    with pytest.raises(FileNotFoundError, match="1 of 2 image files"):
        csv_dataset(table, NIH)
    with pytest.raises(ValueError, match="'patient'"):
        csv_dataset(table, NIH, patient_column="patient")


def _chexpert_table(tmp_path: Path, nih: LabelledImages) -> Path:
    """A small CheXpert-format train.csv whose images are real nih1000 PNGs laid out like CheXpert."""
    rows = [
        # path, Frontal/Lateral, AP/PA, {column: value}
        ("patient00001/study1/view1_frontal.png", "Frontal", "PA", {"No Finding": "1.0"}),
        ("patient00001/study2/view1_frontal.png", "Frontal", "AP", {"Pleural Effusion": "1.0", "Edema": "-1.0"}),
        ("patient00002/study1/view1_frontal.png", "Frontal", "AP", {"Cardiomegaly": "-1.0", "Pneumonia": "0.0"}),
        ("patient00002/study1/view2_lateral.png", "Lateral", "", {"Cardiomegaly": "1.0"}),
        ("patient00003/study1/view1_frontal.png", "Frontal", "PA", {"Support Devices": "1.0", "Pneumonia": "0.0"}),
    ]
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_COLUMNS]
    lines = []
    for i, (rel, frontal, view, values) in enumerate(rows):
        target = tmp_path / "train" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(nih.paths[i], target)
        lines.append([f"CheXpert-v1.0-small/train/{rel}", "Female", "60", frontal, view,
                      *(values.get(c, "") for c in CHEXPERT_COLUMNS)])  # fmt: skip
    table = tmp_path / "train.csv"
    _write_csv(table, header, lines)
    return table


@needs_nih
@pytest.mark.parametrize(("policy", "u"), [("ignore", np.nan), ("positive", 1.0), ("negative", 0.0)])
def test_chexpert_uncertainty_policies(tmp_path, nih, policy, u):
    table = _chexpert_table(tmp_path, nih)
    labels = [ABNORMAL, "Effusion", "Edema", "Cardiomegaly", "Pneumonia", "Infiltration"]
    data = chexpert(table, tmp_path, labels=labels, uncertain=policy)
    assert len(data) == 4 and data.summary()["laterals_dropped"] == 1
    assert data.label_names == tuple(labels)
    assert list(data.patient_ids) == ["patient00001", "patient00001", "patient00002", "patient00003"]
    assert list(data.view_positions) == ["PA", "AP", "AP", "PA"]
    n = np.nan
    expected = np.array(
        [
            [0, n, n, n, n, n],  # No Finding = 1
            [1, 1, u, n, n, n],  # effusion positive, edema uncertain
            [u, n, n, u, 0, n],  # only an uncertain finding
            [n, n, n, n, 0, n],  # support devices are not a finding; nothing else positive
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(data.labels, expected)
    assert data.paths[1] == tmp_path / "train/patient00001/study2/view1_frontal.png"
    assert data.load(1).pixels.shape == (64, 64)


@needs_nih
def test_chexpert_laterals_defaults_and_bad_values(tmp_path, nih):
    table = _chexpert_table(tmp_path, nih)
    everything = chexpert(table, tmp_path, frontal_only=False)
    assert len(everything) == 5 and everything.label_names[0] == ABNORMAL and "Effusion" in everything.label_names
    assert everything.labels[3, everything.label_names.index("Cardiomegaly")] == 1
    text = table.read_text().replace("-1.0", "2", 1)
    table.write_text(text)
    with pytest.raises(ValueError, match=r"row 2 \(line 3\), column 'Edema'.*'2'"):
        chexpert(table, tmp_path)
    with pytest.raises(ValueError, match="uncertain"):
        chexpert(table, tmp_path, uncertain="maybe")


# --------------------------------------------------------------------------------------------------------------
# Merging and the torch dataset
# --------------------------------------------------------------------------------------------------------------
@needs_nih
@needs_pneumonia
def test_merge_nih_and_pneumoniamnist(nih):
    mnist = medmnist_npz(PNEUMONIA, "val")
    merged = merge([nih, mnist])
    assert len(merged) == 1000 + 524
    assert merged.label_names == nih.label_names  # "Pneumonia" is an NIH label too: the union adds nothing
    nih_rows, mnist_rows = merged.labels[:1000], merged.labels[1000:]
    np.testing.assert_array_equal(nih_rows, nih.labels)
    pneumonia = merged.label_names.index("Pneumonia")
    np.testing.assert_array_equal(mnist_rows[:, pneumonia], mnist.labels[:, 0])
    others = [k for k in range(len(merged.label_names)) if k != pneumonia]
    assert np.isnan(mnist_rows[:, others]).all()
    assert merged.paths is None and merged.arrays is None  # mixed files and arrays
    assert merged.load(0).pixels.shape == (64, 64) and merged.load(1000).pixels.shape == (28, 28)
    assert merged.patient_ids[0].startswith("nih:nih1000/")
    assert merged.patient_ids[1000].startswith("medmnist:pneumoniamnist:val/")
    summary = merged.summary()
    assert summary["n_patients"] == 264 + 524 and summary["source"] == "nih:nih1000+medmnist:pneumoniamnist:val"
    assert summary["labels"]["Pneumonia"]["positive"] == 11 + 389
    assert summary["labels"]["Effusion"]["missing"] == 524
    assert [part["n"] for part in summary["parts"]] == [1000, 524]

    picked = merge([mnist, nih], label_names=["pneumonia", ABNORMAL])
    assert picked.label_names == ("Pneumonia", ABNORMAL)
    assert np.isnan(picked.labels[:524, 1]).all() and not np.isnan(picked.labels[524:]).any()

    splits = patient_split(merged, seed=0)
    assert not set(splits["train"].patient_ids) & set(splits["test"].patient_ids)

    small = merged.subset([0, 1, 999, 1000, 1001, 1523])
    ds = ImageTensorDataset(small, PreprocessSpec(size=32))
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y.shape == (15,)
    x, y = ds[3]
    assert torch.isnan(y).sum() == 14 and not torch.isnan(x).any()


@needs_nih
def test_image_tensor_dataset_matches_the_serving_path_bit_for_bit(nih):
    spec = PreprocessSpec(size=64)
    ds = ImageTensorDataset(nih, spec)  # all 1000 images: a few seconds
    assert len(ds) == 1000 and ds.images.shape == (1000, 1, 64, 64) and ds.label_names == nih.label_names
    for i in (0, 17, 500, 999):
        x, y = ds[i]
        served = preprocess(decode_file(nih.paths[i]), spec)
        assert x.dtype == torch.float32 and np.array_equal(x.numpy(), served)
        np.testing.assert_array_equal(y.numpy(), nih.labels[i])
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False)
    xb, yb = next(iter(loader))
    assert xb.shape == (8, 1, 64, 64) and yb.shape == (8, 15)

    augmented = ds.with_augment(RandomRadiographAugment(AugmentConfig(), spec, torch.Generator().manual_seed(0)))
    assert augmented.images is ds.images
    xa, ya = augmented[0]
    assert xa.shape == (1, 64, 64) and not torch.equal(xa, ds[0][0]) and torch.equal(ya, ds[0][1])
    assert torch.equal(ds[0][0], torch.from_numpy(preprocess(decode_file(nih.paths[0]), spec)))  # cache untouched


@needs_nih
def test_preprocess_all_other_spec_and_progress(nih, capsys):
    spec = PreprocessSpec(size=32, resize="crop", interpolation="bilinear", normalisation="histeq")
    part = nih.subset(range(10))
    out = preprocess_all(part, spec, progress=True)
    assert out.shape == (10, 1, 32, 32) and out.dtype == np.float32
    np.testing.assert_array_equal(out[3], preprocess(decode_file(part.paths[3]), spec))
    assert "10/10" in capsys.readouterr().err


@needs_nih
def test_positive_weights_on_nih(nih):
    weights = dict(zip(nih.label_names, positive_weights(nih), strict=True))
    assert weights[ABNORMAL] == pytest.approx(499 / 501)
    assert weights["Effusion"] == pytest.approx(830 / 170)
    assert weights["Hernia"] == 50.0  # 991 / 9 = 110, clipped
