"""Label names: the one source of truth for training, export, serving and the UI."""

from __future__ import annotations

ABNORMAL = "Abnormal"
"""The binary "abnormality detected" output: any finding versus "No Finding"."""

NO_FINDING = "No Finding"

# NIH ChestX-ray14 pathologies, in the order torchxrayvision and the NIH table use.
NIH_PATHOLOGIES: tuple[str, ...] = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
)

# torchxrayvision's 18-label "all" list (its default_pathologies), for interop with its models.
XRV_PATHOLOGIES: tuple[str, ...] = (
    *NIH_PATHOLOGIES,
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)

# Findings the synthetic phantoms can draw (models/phantoms.py); names follow the NIH spelling where one exists.
PHANTOM_FINDINGS: tuple[str, ...] = (
    "Nodule",
    "Mass",
    "Effusion",
    "Cardiomegaly",
    "Pneumothorax",
    "Consolidation",
)

# The NIH ChestX-ray14 labels with enough positives in the 1000-image subset (../shared/data/nih1000) to train and
# test: the shipped models, experiments and real-data tests use them.
NIH1000_LABELS: tuple[str, ...] = (ABNORMAL, "Effusion", "Infiltration", "Atelectasis", "Cardiomegaly")

_CANONICAL = {name.lower().replace(" ", "_"): name for name in (*XRV_PATHOLOGIES, ABNORMAL, NO_FINDING)}


def canonical_label(name: str) -> str:
    """Map a user's spelling ("pleural thickening", "EFFUSION") to the canonical name; unknown names pass through."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    return _CANONICAL.get(key, name.strip())
