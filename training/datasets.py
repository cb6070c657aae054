"""Labelled radiograph sets: image folders, CSV tables, NIH ChestX-ray14, CheXpert, MedMNIST .npz and phantoms.

Every loader returns a `LabelledImages` index (images by path or as in-memory arrays, a float32 label matrix with NaN
for "not annotated"). Images are turned into model inputs through `models.imaging` + `models.preprocessing`, the same
numpy path the service uses, so a training tensor equals what the service feeds the model for the same file.

This module imports numpy only; torch is imported inside `ImageTensorDataset` so the loaders stay usable from
torch-free code (batch scoring of a folder, the CLI).
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.imaging import Radiograph, decode_file, from_array
from models.labels import ABNORMAL, NIH_PATHOLOGIES, NO_FINDING, PHANTOM_FINDINGS, canonical_label
from models.preprocessing import PreprocessSpec, preprocess

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm")

Item = Path | np.ndarray
"""One image of a set: a file to decode, or a 2-D grey array (uint8/uint16/float in [0, 1])."""

SPLITS: tuple[str, str, str] = ("train", "val", "test")

# CheXpert's label columns (train.csv / valid.csv) and their canonical (NIH/torchxrayvision) names.
CHEXPERT_COLUMNS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
_CHEXPERT_RENAME = {"Pleural Effusion": "Effusion"}
_CHEXPERT_NOT_FINDINGS = {"No Finding", "Support Devices"}  # columns that do not make an image abnormal
CHEXPERT_LABELS: tuple[str, ...] = (
    ABNORMAL,
    "Atelectasis",
    "Consolidation",
    "Pneumothorax",
    "Edema",
    "Effusion",
    "Pneumonia",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Enlarged Cardiomediastinum",
    "Fracture",
)

_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}


class LabelledImages:
    """Index of a labelled image set: images by path or as in-memory arrays, labels with NaN = missing.

    Internally every image is one `item` (a `Path` or a 2-D array), so sets from different sources, file-based and
    in-memory, of different resolutions, can be merged. `paths` / `arrays` give the homogeneous views when they
    exist. `notes` holds JSON-friendly facts about how the set was built (rows dropped, class folders, split);
    `summary()` reports them.
    """

    def __init__(
        self,
        label_names: Sequence[str],
        labels: np.ndarray,
        paths: Sequence[Path | str] | None = None,
        arrays: np.ndarray | None = None,
        patient_ids: Sequence[str] | np.ndarray | None = None,
        view_positions: Sequence[str] | np.ndarray | None = None,
        source: str = "",
        *,
        items: Sequence[Item] | None = None,
        notes: dict[str, Any] | None = None,
        origins: Sequence[str] | np.ndarray | None = None,
    ) -> None:
        if sum(x is not None for x in (paths, arrays, items)) != 1:
            raise ValueError("expected exactly one of paths, arrays or items")
        if paths is not None:
            self.items: list[Item] = [p if isinstance(p, Path) else Path(p) for p in paths]
        elif arrays is not None:
            arrays = np.asarray(arrays)
            if arrays.ndim != 3:
                raise ValueError(f"expected arrays of shape (N, H, W), got {arrays.shape}")
            self.items = list(arrays)  # views into `arrays`, no copy
        else:
            assert items is not None
            self.items = [item if isinstance(item, Path | np.ndarray) else Path(item) for item in items]
            for i, item in enumerate(self.items):
                if isinstance(item, np.ndarray) and item.ndim != 2:
                    raise ValueError(f"expected item {i} to be a 2-D grey image, got shape {item.shape}")
        n = len(self.items)

        self.label_names: tuple[str, ...] = tuple(str(name) for name in label_names)
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"expected unique label names, got {self.label_names}")
        labels = np.asarray(labels, dtype=np.float32)
        if labels.shape != (n, len(self.label_names)):
            raise ValueError(
                f"expected labels of shape ({n}, {len(self.label_names)}) for {n} images and labels "
                f"{self.label_names}, got {labels.shape}"
            )
        known = np.isnan(labels) | (labels == 0) | (labels == 1)
        if not known.all():
            bad = labels[~known][:5]
            raise ValueError(f"expected labels in {{0, 1, NaN}}, got values such as {bad.tolist()}")
        self.labels: np.ndarray = labels  # (N, K) float32 in {0, 1, NaN}

        self.patient_ids: np.ndarray | None = _string_column(patient_ids, n, "patient_ids")  # (N,) str
        self.view_positions: np.ndarray | None = _string_column(view_positions, n, "view_positions")  # (N,) str
        self.source = source
        self.notes: dict[str, Any] = dict(notes or {})
        # (N,) str: the source each image came from (merged sets mix them); metrics are reported per origin
        self.origins: np.ndarray = _string_column(origins, n, "origins") if origins is not None else np.full(n, source)

    # -- views -----------------------------------------------------------------------------------------------
    @property
    def paths(self) -> list[Path] | None:
        """The image files, when every item is a file; else None."""
        if all(isinstance(item, Path) for item in self.items):
            return list(self.items)  # type: ignore[arg-type]
        return None

    @property
    def arrays(self) -> np.ndarray | None:
        """(N, H, W) stacked in-memory images, when every item is an array of one shape and dtype; else None."""
        if not self.items or not all(isinstance(item, np.ndarray) for item in self.items):
            return None
        first = self.items[0]
        assert isinstance(first, np.ndarray)
        if any(item.shape != first.shape or item.dtype != first.dtype for item in self.items):  # type: ignore[union-attr]
            return None
        return np.stack(self.items)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (
            f"LabelledImages(source={self.source!r}, n={len(self)}, labels={list(self.label_names)}, "
            f"patients={'yes' if self.patient_ids is not None else 'no'})"
        )

    def load(self, i: int) -> Radiograph:
        """Decode item `i` exactly as the service would (file) or wrap it (array)."""
        item = self.items[i]
        try:
            return decode_file(item) if isinstance(item, Path) else from_array(item)
        except Exception as error:
            error.add_note(f"while loading item {i} of {self.source or 'a dataset'}: {_describe(item)}")
            raise

    # -- derived sets ----------------------------------------------------------------------------------------
    def subset(self, index: np.ndarray | Sequence[int]) -> LabelledImages:
        """The rows at `index` (integer positions, or a boolean mask of length N), in that order."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"expected a boolean mask of length {len(self)}, got shape {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a set of {len(self)} images")
        return LabelledImages(
            self.label_names,
            self.labels[idx],
            items=[self.items[i] for i in idx],
            patient_ids=None if self.patient_ids is None else self.patient_ids[idx],
            view_positions=None if self.view_positions is None else self.view_positions[idx],
            source=self.source,
            notes=self.notes,
            origins=self.origins[idx],
        )

    def select_labels(self, names: Sequence[str]) -> LabelledImages:
        """Keep / reorder label columns; a name this set does not annotate becomes an all-NaN column."""
        wanted = [canonical_label(name) for name in names]
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"expected unique label names, got {list(names)}")
        column = {name: k for k, name in enumerate(self.label_names)}
        labels = np.full((len(self), len(wanted)), np.nan, dtype=np.float32)
        for j, name in enumerate(wanted):
            if name in column:
                labels[:, j] = self.labels[:, column[name]]
        return LabelledImages(
            wanted,
            labels,
            items=self.items,
            patient_ids=self.patient_ids,
            view_positions=self.view_positions,
            source=self.source,
            notes=self.notes,
            origins=self.origins,
        )

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description for checkpoints and manifests: size, patients, per-label counts, notes."""
        per_label = {}
        for k, name in enumerate(self.label_names):
            column = self.labels[:, k]
            per_label[name] = {
                "positive": int((column == 1).sum()),
                "negative": int((column == 0).sum()),
                "missing": int(np.isnan(column).sum()),
            }
        result: dict[str, Any] = {
            "source": self.source,
            "n": len(self),
            "n_patients": None if self.patient_ids is None else int(len(np.unique(self.patient_ids))),
            "labels": per_label,
        }
        if self.view_positions is not None:
            views, counts = np.unique(self.view_positions, return_counts=True)
            result["views"] = {str(v): int(c) for v, c in zip(views, counts, strict=True)}
        result.update(self.notes)
        return result


# ---------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------
def image_folder(root: Path | str, *, label: str = ABNORMAL) -> LabelledImages:
    """`root/<class>/<image>` (png, jpg, jpeg, dcm). Class folders sorted by name.

    Two classes -> one binary column named `label` whose positive class is the second folder ("0_normal",
    "1_abnormal"); more -> one-hot columns named by folder. For `root/{train,valid,test}/<class>/` pass
    `root / "train"` etc.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    classes: list[tuple[str, list[Path]]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            classes.append((folder.name, files))
    if len(classes) < 2:
        nested = [p.name for p in sorted(root.iterdir()) if p.is_dir() and any(q.is_dir() for q in p.iterdir())]
        hint = f"; it holds nested folders {nested}: pass e.g. {root / nested[0]}" if nested else ""
        raise ValueError(
            f"expected at least 2 class folders with images ({', '.join(IMAGE_SUFFIXES)}) directly under {root}, "
            f"found {[name for name, _ in classes]}{hint}"
        )
    items = [f for _, files in classes for f in files]
    class_index = np.concatenate([np.full(len(files), c) for c, (_, files) in enumerate(classes)])
    if len(classes) == 2:
        names: list[str] = [canonical_label(label)]
        labels = class_index[:, np.newaxis].astype(np.float32)  # (N, 1)
    else:
        names = [name for name, _ in classes]
        labels = np.eye(len(classes), dtype=np.float32)[class_index]  # (N, C)
    notes: dict[str, Any] = {"classes": [name for name, _ in classes]}
    if len(classes) == 2:
        notes["positive_class"] = classes[1][0]
    return LabelledImages(names, labels, items=items, source=f"folder:{root.as_posix()}", notes=notes)


def csv_dataset(
    csv_path: Path | str,
    image_root: Path | str,
    *,
    path_column: str = "path",
    label_columns: Sequence[str] | None = None,
    patient_column: str | None = None,
    view_column: str | None = None,
) -> LabelledImages:
    """A table with one image per row: a path (relative to `image_root`, or absolute) and binary label columns.

    Label cells: 1/0/true/false/yes/no (any case, also 1.0/0.0); blank = not annotated (NaN). Any other value is a
    `ValueError` naming the row, column and value. `label_columns=None` takes every column except the path, patient
    and view columns. Label names are canonicalised ("pleural thickening" -> "Pleural_Thickening"). A row whose image
    file is missing is a `FileNotFoundError` (a user's own table should be complete).
    """
    csv_path, image_root = Path(csv_path), Path(image_root)
    header, rows = _read_csv(csv_path)
    special = [c for c in (path_column, patient_column, view_column) if c is not None]
    if label_columns is None:
        label_columns = [c for c in header if c not in special]
    for column in (*special, *label_columns):
        if column not in header:
            raise ValueError(f"{csv_path}: expected a column {column!r}; the columns are {header}")
    if not label_columns:
        raise ValueError(f"{csv_path}: expected at least one label column besides {special}")

    labels = np.empty((len(rows), len(label_columns)), dtype=np.float32)
    paths: list[Path] = []
    for r, (line, row) in enumerate(rows):
        for k, column in enumerate(label_columns):
            labels[r, k] = _parse_binary(row[column], csv_path, r + 1, line, column)
        raw = (row[path_column] or "").strip()
        if not raw:
            raise ValueError(f"{csv_path}: row {r + 1} (line {line}), column {path_column!r}: empty image path")
        path = Path(raw)
        paths.append(path if path.is_absolute() else image_root / path)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise FileNotFoundError(f"{csv_path}: {len(missing)} of {len(paths)} image files do not exist, e.g. {shown}")
    return LabelledImages(
        [canonical_label(c) for c in label_columns],
        labels,
        paths=paths,
        patient_ids=None if patient_column is None else [row[patient_column].strip() for _, row in rows],
        view_positions=None if view_column is None else [row[view_column].strip().upper() for _, row in rows],
        source=f"csv:{csv_path.name}",
    )


def nih_chestxray14(
    csv_path: Path | str,
    image_root: Path | str,
    *,
    labels: Sequence[str] = (ABNORMAL, *NIH_PATHOLOGIES),
    view_positions: Sequence[str] | None = None,
    require_images: bool = True,
) -> LabelledImages:
    """NIH ChestX-ray14 from its official table (`Data_Entry_2017*.csv`, optionally .gz).

    Labels: each NIH pathology is 1 when listed in "Finding Labels" (pipe-separated) and 0 otherwise; `Abnormal` is
    "not No Finding"; a requested label NIH does not annotate is NaN. Images are found by file name anywhere under
    `image_root`. Rows whose image is absent are dropped when `require_images` (counted as `missing_images` in the
    summary), which lets the full 112k-row table index a partial download.
    """
    csv_path, image_root = Path(csv_path), Path(image_root)
    header, rows = _read_csv(csv_path)
    for column in ("Image Index", "Finding Labels", "Patient ID", "View Position"):
        if column not in header:
            raise ValueError(f"{csv_path}: expected the NIH column {column!r}; the columns are {header}")
    names = [canonical_label(name) for name in labels]
    if len(set(names)) != len(names):
        raise ValueError(f"expected unique label names, got {list(labels)}")
    nih = set(NIH_PATHOLOGIES)
    index = _index_images(image_root) if image_root.is_dir() else {}
    if require_images and not index:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {image_root}")
    wanted_views = None if view_positions is None else {v.strip().upper() for v in view_positions}

    items: list[Path] = []
    label_rows: list[list[float]] = []
    patients: list[str] = []
    views: list[str] = []
    missing = other_views = 0
    for _line, row in rows:
        view = row["View Position"].strip().upper()
        if wanted_views is not None and view not in wanted_views:
            other_views += 1
            continue
        name = row["Image Index"].strip()
        path = index.get(name)
        if path is None:
            if require_images:
                missing += 1
                continue
            path = image_root / name
        findings = {canonical_label(f) for f in row["Finding Labels"].split("|") if f.strip()}
        if not findings:
            raise ValueError(f"{csv_path}: image {name}: empty 'Finding Labels' (expected 'No Finding' or findings)")
        vector = []
        for label in names:
            if label == ABNORMAL:
                vector.append(float(NO_FINDING not in findings))
            elif label == NO_FINDING:
                vector.append(float(NO_FINDING in findings))
            elif label in nih:
                vector.append(float(label in findings))
            else:
                vector.append(np.nan)
        items.append(path)
        label_rows.append(vector)
        patients.append(_patient_number(row["Patient ID"]))
        views.append(view)
    notes = {"rows_in_table": len(rows), "missing_images": missing}
    if wanted_views is not None:
        notes["other_views_dropped"] = other_views
    return _from_table_rows(names, label_rows, items, patients, views, f"nih:{image_root.name}", notes)


def chexpert(
    csv_path: Path | str,
    image_root: Path | str,
    *,
    labels: Sequence[str] = CHEXPERT_LABELS,
    uncertain: Literal["ignore", "positive", "negative"] = "ignore",
    frontal_only: bool = True,
    require_images: bool = True,
) -> LabelledImages:
    """CheXpert `train.csv` / `valid.csv`: "Path", "Frontal/Lateral", "AP/PA" and label columns with 1.0, 0.0,
    -1.0 (uncertain) or blank (not mentioned -> NaN).

    `uncertain`: "ignore" -> NaN, "positive" -> 1 (U-Ones), "negative" -> 0 (U-Zeros). Column names are mapped to the
    canonical ones ("Pleural Effusion" -> "Effusion"). `Abnormal` = "not No Finding": 0 when No Finding is 1, 1 when
    No Finding is 0 or a finding other than Support Devices is positive; otherwise it follows the uncertainty policy
    when a finding is uncertain, else NaN. The path is resolved under `image_root`, dropping leading components as
    needed ("CheXpert-v1.0-small/train/patient00001/..." works with image_root = the folder holding "train").
    Patient ids come from the path ("patient00001").
    """
    if uncertain not in ("ignore", "positive", "negative"):
        raise ValueError(f"expected uncertain in ('ignore', 'positive', 'negative'), got {uncertain!r}")
    csv_path, image_root = Path(csv_path), Path(image_root)
    header, rows = _read_csv(csv_path)
    for column in ("Path", "Frontal/Lateral"):
        if column not in header:
            raise ValueError(f"{csv_path}: expected the CheXpert column {column!r}; the columns are {header}")
    columns = [c for c in CHEXPERT_COLUMNS if c in header]
    canonical = {c: _CHEXPERT_RENAME.get(c, canonical_label(c)) for c in columns}
    column_of = {name: c for c, name in canonical.items()}
    names = [canonical_label(name) for name in labels]
    if len(set(names)) != len(names):
        raise ValueError(f"expected unique label names, got {list(labels)}")
    uncertain_value = {"ignore": np.nan, "positive": 1.0, "negative": 0.0}[uncertain]
    resolver = _PathResolver(image_root)

    items: list[Path] = []
    label_rows: list[list[float]] = []
    patients: list[str] = []
    views: list[str] = []
    missing = laterals = 0
    for r, (line, row) in enumerate(rows):
        if frontal_only and row["Frontal/Lateral"].strip().lower() != "frontal":
            laterals += 1
            continue
        raw_path = row["Path"].strip()
        path = resolver(raw_path)
        if path is None:
            if require_images:
                missing += 1
                continue
            path = image_root / raw_path
        raw = {c: _parse_chexpert(row[c], csv_path, r + 1, line, c) for c in columns}  # 1, 0, -1 or NaN
        vector = []
        for label in names:
            if label == ABNORMAL:
                vector.append(_chexpert_abnormal(raw, uncertain_value))
            elif label in column_of:
                value = raw[column_of[label]]
                vector.append(uncertain_value if value == -1 else value)
            else:
                vector.append(np.nan)
        items.append(path)
        label_rows.append(vector)
        match = re.search(r"patient\d+", raw_path)
        patients.append(match.group(0) if match else raw_path)
        views.append(row.get("AP/PA", "").strip().upper())
    notes = {"rows_in_table": len(rows), "missing_images": missing, "uncertain": uncertain}
    if frontal_only:
        notes["laterals_dropped"] = laterals
    return _from_table_rows(names, label_rows, items, patients, views, f"chexpert:{csv_path.stem}", notes)


def _from_table_rows(
    names: Sequence[str],
    label_rows: list[list[float]],
    items: list[Path],
    patients: list[str],
    views: list[str],
    source: str,
    notes: dict[str, Any],
) -> LabelledImages:
    """The images a label table (NIH, CheXpert) describes, one row each."""
    return LabelledImages(
        names,
        np.asarray(label_rows, dtype=np.float32).reshape(len(items), len(names)),
        paths=items,
        patient_ids=patients,
        view_positions=views,
        source=source,
        notes=notes,
    )


def medmnist_npz(
    path: Path | str, split: Literal["train", "val", "test"], *, label: str = "Pneumonia"
) -> LabelledImages:
    """A MedMNIST .npz split: `{split}_images` (N, H, W) uint8 and `{split}_labels` (N, L).

    Binary sets (one label column with values 0/1 in every split) -> one column named `label` (1 = positive, e.g.
    pneumonia); multi-class sets -> one-hot columns "class_<i>"; multi-label sets (L > 1) -> columns "class_<i>".
    """
    if split not in SPLITS:
        raise ValueError(f"expected split in {SPLITS}, got {split!r}")
    path = Path(path)
    with np.load(path) as data:
        for key in (f"{split}_images", f"{split}_labels"):
            if key not in data:
                raise ValueError(f"{path}: expected the key {key!r}; the keys are {sorted(data.keys())}")
        images = data[f"{split}_images"]
        raw = data[f"{split}_labels"]
        all_labels = [data[key] for key in data.keys() if key.endswith("_labels")]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise ValueError(f"{path}: expected grey images (N, H, W), got {split}_images of shape {images.shape}")
    raw = raw.reshape(len(raw), -1)
    if len(raw) != len(images):
        raise ValueError(f"{path}: {len(images)} {split} images but {len(raw)} label rows")
    if raw.shape[1] == 1:
        n_classes = int(max(int(a.max()) for a in all_labels if a.size)) + 1
        if n_classes <= 2:
            names = [canonical_label(label)]
            labels = raw.astype(np.float32)
        else:
            names = [f"class_{i}" for i in range(n_classes)]
            labels = np.eye(n_classes, dtype=np.float32)[raw[:, 0].astype(np.int64)]
    else:
        names = [f"class_{i}" for i in range(raw.shape[1])]
        labels = raw.astype(np.float32)
    return LabelledImages(names, labels, arrays=images, source=f"medmnist:{path.stem}:{split}")


def phantom_dataset(n: int, *, size: int = 128, seed: int = 0, prevalence: float = 0.25) -> LabelledImages:
    """Synthetic chest radiographs with known findings (`models.phantoms`); columns `Abnormal` (any finding) first,
    then `PHANTOM_FINDINGS`. Each phantom is its own "patient" (split by image)."""
    from models.phantoms import phantom_set  # imported here: the phantom generator is only needed for this loader

    images, findings, _boxes = phantom_set(n, size=size, seed=seed, prevalence=prevalence)
    findings = np.asarray(findings, dtype=np.float32)  # (N, K) in PHANTOM_FINDINGS order
    abnormal = (findings == 1).any(axis=1, keepdims=True).astype(np.float32)
    return LabelledImages(
        (ABNORMAL, *PHANTOM_FINDINGS),
        np.concatenate([abnormal, findings], axis=1),
        arrays=np.asarray(images, dtype=np.float32),
        source=f"phantoms:seed={seed}",
        notes={"phantoms": {"n": n, "size": size, "seed": seed, "prevalence": prevalence}},
    )


# ---------------------------------------------------------------------------------------------------------------
# Combining, splitting, filtering
# ---------------------------------------------------------------------------------------------------------------
def merge(datasets: Sequence[LabelledImages], label_names: Sequence[str] | None = None) -> LabelledImages:
    """Concatenate sets (torchxrayvision's Merge_Dataset): the union of label names in order of first appearance
    (or `label_names`); a label a set does not annotate is NaN for its rows. Files and arrays of any resolution mix.

    Patient ids are namespaced by source ("nih:nih1000/17") so two sources cannot collide; a set without patient ids
    gets one id per image, unless no set has any (then the merged set has none and splits by image).
    """
    if not datasets:
        raise ValueError("expected at least one dataset to merge")
    if label_names is None:
        names: list[str] = []
        for data in datasets:
            names.extend(name for name in data.label_names if name not in names)
    else:
        names = [canonical_label(name) for name in label_names]
    namespaces = [data.source or f"dataset{k}" for k, data in enumerate(datasets)]
    items: list[Item] = [item for data in datasets for item in data.items]
    labels = np.concatenate([data.select_labels(names).labels for data in datasets], axis=0)

    patients = None
    if any(data.patient_ids is not None for data in datasets):
        patients = []
        for data, space in zip(datasets, namespaces, strict=True):
            if data.patient_ids is not None:
                patients.extend(f"{space}/{p}" for p in data.patient_ids)
            else:
                patients.extend(f"{space}/#image{i}" for i in range(len(data)))
    views = None
    if any(data.view_positions is not None for data in datasets):
        views = []
        for data in datasets:
            views.extend(data.view_positions if data.view_positions is not None else [""] * len(data))
    sources = list(dict.fromkeys(namespaces))
    return LabelledImages(
        names,
        labels.reshape(len(items), len(names)),
        items=items,
        patient_ids=patients,
        view_positions=views,
        source="+".join(sources),
        notes={"parts": [data.summary() for data in datasets]},
        origins=np.concatenate([data.origins for data in datasets]),
    )


def patient_split(
    data: LabelledImages, *, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, LabelledImages]:
    """Split into "train", "val", "test" by patient when patient ids exist (never one patient in two splits), else by
    image. Groups are shuffled with `seed` and laid end to end; a group goes to the split its middle image falls in,
    so image fractions come out close to `fractions` and a split with fraction 0 is empty. Deterministic per seed."""
    fractions_array = np.asarray(fractions, dtype=np.float64)
    if fractions_array.shape != (3,) or (fractions_array < 0).any() or abs(fractions_array.sum() - 1) > 1e-6:
        raise ValueError(f"expected 3 non-negative fractions summing to 1, got {fractions}")
    n = len(data)
    if data.patient_ids is not None:
        groups, group_of = np.unique(data.patient_ids, return_inverse=True)
        n_groups = len(groups)
    else:
        group_of = np.arange(n)
        n_groups = n
    order = np.random.default_rng(seed).permutation(n_groups)
    sizes = np.bincount(group_of, minlength=n_groups)[order].astype(np.float64)
    middles = np.cumsum(sizes) - sizes / 2  # position of each shuffled group's middle image
    bounds = np.cumsum(fractions_array)[:2] * n
    split_of_group = np.empty(n_groups, dtype=np.int64)
    split_of_group[order] = np.searchsorted(bounds, middles, side="right")
    split_of_image = split_of_group[group_of]
    result = {}
    for s, name in enumerate(SPLITS):
        part = data.subset(np.flatnonzero(split_of_image == s))
        part.notes = {**data.notes, "split": {"name": name, "seed": seed, "fractions": list(map(float, fractions))}}
        result[name] = part
    return result


def filter_views(data: LabelledImages, views: Sequence[str]) -> LabelledImages:
    """Keep the images whose view position (case-insensitive) is one of `views`, e.g. ("PA",)."""
    if data.view_positions is None:
        raise ValueError(f"{data.source or 'this dataset'} has no view positions to filter on")
    wanted = np.asarray([v.strip().upper() for v in views])
    return data.subset(np.isin(np.char.upper(data.view_positions.astype(str)), wanted))


def positive_weights(data: LabelledImages, clip: tuple[float, float] = (0.02, 50.0)) -> np.ndarray:
    """Per-label `pos_weight` for BCEWithLogitsLoss: negatives / positives over annotated rows, clipped to `clip`.

    Positives and negatives then weigh the same in the loss, whichever class is the rarer: a label with more
    positives than negatives (PneumoniaMNIST's training split: 9 pneumonia films per normal one) gets a weight < 1.
    A label without positives gets the upper bound. Returns (K,) float32."""
    positives = (data.labels == 1).sum(axis=0).astype(np.float64)
    negatives = (data.labels == 0).sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(positives > 0, negatives / np.maximum(positives, 1), clip[1])
    return np.clip(ratio, *clip).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Model inputs
# ---------------------------------------------------------------------------------------------------------------
def preprocess_all(data: LabelledImages, spec: PreprocessSpec, progress: bool = False) -> np.ndarray:
    """Decode + preprocess every image once, as the service does: (N, 1, S, S) float32."""
    out = np.empty((len(data), 1, spec.size, spec.size), dtype=np.float32)
    indices: Iterator[int] | range = range(len(data))
    if progress:
        from tqdm.auto import tqdm

        indices = iter(tqdm(indices, desc=f"preprocessing {data.source or 'images'}", unit="img"))
    for i in indices:
        out[i] = preprocess(data.load(i), spec)
    return out


class ImageTensorDataset:
    """A map-style torch dataset over a `LabelledImages`: decodes + preprocesses each image ONCE (through
    `models.imaging` / `models.preprocessing`, the service's path) and keeps the float32 (1, S, S) arrays in memory.

    `ds[i]` -> `(x: FloatTensor (1, S, S), y: FloatTensor (K,) with NaN for missing)`; `augment`, if given, is applied
    to `x` on every access (training). Works with `torch.utils.data.DataLoader`, `Subset`, `ConcatDataset`. The cache
    costs N * S * S * 4 bytes (1000 images at 224 px: 200 MB).
    """

    def __init__(
        self,
        data: LabelledImages,
        spec: PreprocessSpec,
        augment: Callable[[Any], Any] | None = None,
        progress: bool = False,
        *,
        _cache: Any = None,
    ) -> None:
        import torch

        self.data = data
        self.spec = spec
        self.augment = augment
        self.label_names = data.label_names
        self.images = _cache if _cache is not None else torch.from_numpy(preprocess_all(data, spec, progress))
        self.labels = torch.from_numpy(np.ascontiguousarray(data.labels, dtype=np.float32))  # (N, K)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        x = self.images[i]  # (1, S, S)
        if self.augment is not None:
            x = self.augment(x)
        return x, self.labels[i]

    def with_augment(self, augment: Callable[[Any], Any] | None) -> ImageTensorDataset:
        """The same cached images with another augmentation (e.g. None for evaluating the training set)."""
        return ImageTensorDataset(self.data, self.spec, augment, _cache=self.images)


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------
def _string_column(values: Sequence[str] | np.ndarray | None, n: int, what: str) -> np.ndarray | None:
    if values is None:
        return None
    column = np.asarray([str(v) for v in values], dtype=str)
    if column.shape != (n,):
        raise ValueError(f"expected {what} of length {n}, got {len(column)}")
    return column


def _describe(item: Item) -> str:
    return str(item) if isinstance(item, Path) else f"array {item.shape} {item.dtype}"


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line number, row), ...]); reads .csv and .csv.gz; strips a BOM."""
    if not path.is_file():
        raise FileNotFoundError(f"label table {path} does not exist")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    rows = []
    for row in reader:
        rows.append((reader.line_num, {k: (v if v is not None else "") for k, v in row.items() if k is not None}))
    return header, rows


def _parse_binary(value: str | None, path: Path, row: int, line: int, column: str) -> float:
    text = (value or "").strip().lower()
    if text == "":
        return np.nan
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    raise ValueError(
        f"{path}: row {row} (line {line}), column {column!r}: expected 1/0/true/false/yes/no or blank, got {value!r}"
    )


def _parse_chexpert(value: str | None, path: Path, row: int, line: int, column: str) -> float:
    text = (value or "").strip()
    if text == "":
        return np.nan
    try:
        number = float(text)
    except ValueError:
        number = np.nan
    if number not in (1.0, 0.0, -1.0):
        raise ValueError(
            f"{path}: row {row} (line {line}), column {column!r}: expected 1, 0, -1 or blank, got {value!r}"
        )
    return number


def _chexpert_abnormal(raw: dict[str, float], uncertain_value: float) -> float:
    no_finding = raw.get("No Finding", np.nan)
    if no_finding == 1:
        return 0.0
    if no_finding == 0:
        return 1.0
    findings = [v for c, v in raw.items() if c not in _CHEXPERT_NOT_FINDINGS]
    if any(v == 1 for v in findings):
        return 1.0
    if any(v == -1 for v in findings):
        return uncertain_value
    return np.nan


def _patient_number(text: str) -> str:
    text = text.strip()
    return str(int(text)) if text.isdigit() else text


def _index_images(root: Path) -> dict[str, Path]:
    """File name -> path for every image under `root` (one rglob); a name found twice is ambiguous -> error."""
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            if path.name in index:
                raise ValueError(f"image name {path.name} occurs twice under {root}: {index[path.name]} and {path}")
            index[path.name] = path
    return index


class _PathResolver:
    """Resolves a table's relative path under `root`, dropping as many leading components as needed (remembered)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.skip: int | None = None

    def __call__(self, raw: str) -> Path | None:
        parts = Path(raw).parts
        tries = range(len(parts)) if self.skip is None else [self.skip, *range(len(parts))]
        for k in tries:
            if k >= len(parts):
                continue
            candidate = self.root.joinpath(*parts[k:])
            if candidate.is_file():
                self.skip = k
                return candidate
        return None
