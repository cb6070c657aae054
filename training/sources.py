"""`--data` specifications -> train/val/test splits of `LabelledImages`.

A spec is `KIND:PATH[:IMAGE_ROOT]`; several specs are merged the torchxrayvision way (labels a source lacks are
missing). Sources with an official split (MedMNIST, image folders with train/valid/test sub-folders) keep it; the
others are split by patient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import datasets
from training.datasets import LabelledImages

KINDS = ("nih", "chexpert", "csv", "folder", "medmnist", "phantoms")
SPLITS = ("train", "val", "test")
_FOLDER_SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}

SPEC_HELP = (
    "data source KIND:PATH[:IMAGE_ROOT], repeatable (merged). KIND is one of "
    "nih (Data_Entry_2017*.csv; images found under IMAGE_ROOT, default the CSV's folder), "
    "chexpert (train.csv), csv (path + label columns), folder (class sub-folders, or train/valid/test of them), "
    "medmnist (.npz with official splits), phantoms (PATH = number of synthetic images)"
)


@dataclass(frozen=True)
class SplitPolicy:
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    views: tuple[str, ...] = ()
    phantom_size: int = 128
    uncertain: str = "ignore"  # CheXpert's -1 labels: ignore (missing) | positive | negative
    test_images_under: Path | None = None  # hold out every patient with an image under this folder as the test split


def policy_from_args(args) -> SplitPolicy:
    """The split settings of a trainer's arguments (or a checkpoint's saved `args`), so a split can be rebuilt."""
    test_images_under = getattr(args, "test_images_under", None)
    return SplitPolicy(
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.split_seed,
        views=tuple(getattr(args, "views", ()) or ()),
        phantom_size=args.input_size,
        uncertain=getattr(args, "uncertain", "ignore"),
        test_images_under=Path(test_images_under) if test_images_under else None,
    )


def limit_labelled_training(splits: dict[str, LabelledImages], fraction: float, seed: int) -> dict[str, LabelledImages]:
    """Keep a random `fraction` of the training images (fixed by `seed`): label-scarce experiments."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"expected a label fraction in (0, 1], got {fraction}")
    if fraction == 1.0:
        return splits
    keep = np.random.default_rng(seed).permutation(len(splits["train"]))
    chosen = np.sort(keep[: max(1, round(fraction * len(keep)))])
    return {**splits, "train": splits["train"].subset(chosen)}


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS or not rest:
        raise ValueError(f"expected a data spec KIND:PATH[:IMAGE_ROOT] with KIND in {KINDS}, got {spec!r}")
    path, _, image_root = rest.partition(":")
    return kind, path, image_root or None


def load_splits(specs: Sequence[str], policy: SplitPolicy) -> dict[str, LabelledImages]:
    """Each spec's own train/val/test, then merged split by split."""
    if not specs:
        raise ValueError("expected at least one --data source, got none")
    per_source = [_source_splits(spec, policy) for spec in specs]
    if len(per_source) == 1:
        return per_source[0]
    names = _union_labels(split["train"] for split in per_source)
    return {name: datasets.merge([s[name] for s in per_source], names) for name in SPLITS}


def _source_splits(spec: str, policy: SplitPolicy) -> dict[str, LabelledImages]:
    kind, path, image_root = parse_spec(spec)
    if kind == "medmnist":
        return {name: datasets.medmnist_npz(path, name) for name in SPLITS}
    if kind == "phantoms":
        n = int(path)
        # three independent seeds: disjoint synthetic patients
        sizes = _split_sizes(n, policy)
        return {
            name: datasets.phantom_dataset(count, size=policy.phantom_size, seed=policy.seed * 10 + i)
            for i, (name, count) in enumerate(zip(SPLITS, sizes, strict=True))
        }
    if kind == "folder" and (official := _folder_splits(Path(path))):
        return official
    data = _load_unsplit(kind, Path(path), Path(image_root) if image_root else None, policy)
    if policy.views:
        data = datasets.filter_views(data, policy.views)
    if policy.test_images_under is not None:
        return _split_around_test_folder(data, policy)
    fractions = (1.0 - policy.val_fraction - policy.test_fraction, policy.val_fraction, policy.test_fraction)
    return datasets.patient_split(data, fractions=fractions, seed=policy.seed)


def _split_around_test_folder(data: LabelledImages, policy: SplitPolicy) -> dict[str, LabelledImages]:
    """A published test folder stays the test split, widened to every image of its patients (nih1000's folders
    leak patients); the other patients are split into train/val."""
    root = Path(policy.test_images_under).resolve()
    paths = data.paths
    if paths is None:
        raise ValueError(f"expected a file-based data set to hold out {root}, got in-memory images ({data.source})")
    in_folder = np.array([root in Path(p).resolve().parents for p in paths])
    if not in_folder.any():
        raise ValueError(f"expected some images of {data.source} under {root}, found none")
    if data.patient_ids is None:
        is_test = in_folder
    else:
        is_test = np.isin(data.patient_ids, data.patient_ids[in_folder])
    rest = data.subset(np.flatnonzero(~is_test))
    val_fraction = policy.val_fraction / max(1e-9, 1.0 - policy.test_fraction)
    splits = datasets.patient_split(rest, fractions=(1.0 - val_fraction, val_fraction, 0.0), seed=policy.seed)
    test = data.subset(np.flatnonzero(is_test))
    test.notes = {**data.notes, "split": {"name": "test", "held_out_folder": str(root), "patients_of_folder": True}}
    splits["test"] = test
    return splits


def _load_unsplit(kind: str, path: Path, image_root: Path | None, policy: SplitPolicy) -> LabelledImages:
    root = image_root or path.parent
    if kind == "nih":
        return datasets.nih_chestxray14(path, root)
    if kind == "chexpert":
        return datasets.chexpert(path, root, uncertain=policy.uncertain)
    if kind == "csv":
        return datasets.csv_dataset(path, root)
    return datasets.image_folder(path)


def _folder_splits(root: Path) -> dict[str, LabelledImages] | None:
    found = {}
    for split, names in _FOLDER_SPLIT_NAMES.items():
        folder = next((root / n for n in names if (root / n).is_dir()), None)
        if folder is None:
            return None
        found[split] = datasets.image_folder(folder)
    return found


def _split_sizes(n: int, policy: SplitPolicy) -> tuple[int, int, int]:
    n_val = int(round(n * policy.val_fraction))
    n_test = int(round(n * policy.test_fraction))
    return n - n_val - n_test, n_val, n_test


def _union_labels(sets) -> tuple[str, ...]:
    names: list[str] = []
    for data in sets:
        names.extend(n for n in data.label_names if n not in names)
    return tuple(names)


def choose_labels(train: LabelledImages, requested: Sequence[str] | None, min_positives: int) -> tuple[str, ...]:
    """The requested labels, or every label with at least `min_positives` known positives in the training split."""
    if requested:
        missing = [name for name in requested if name not in train.label_names]
        if missing:
            raise ValueError(f"labels {missing} are not in the data; available: {list(train.label_names)}")
        return tuple(requested)
    positives = np.nansum(train.labels, axis=0)
    chosen = tuple(name for name, count in zip(train.label_names, positives, strict=True) if count >= min_positives)
    if not chosen:
        counts = dict(zip(train.label_names, positives.tolist(), strict=True))
        raise ValueError(f"no label has {min_positives} positives in the training split: {counts}")
    return chosen
