"""torchxrayvision interop: an xrv DenseNet-121 (built with weights=None: no downloads here) becomes our checkpoint,
gives the same outputs as xrv itself, and exports into the registry with xrv's 18 labels and thresholds."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from models.classifier import ClassifierConfig, XRayClassifier
from models.imaging import decode_file
from models.preprocessing import preprocess
from models.registry import Registry
from tests.conftest import require_shared
from training import checkpoints, export, xrv_import

# not importorskip: importing xrv here would silence warnings for the whole test session
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torchxrayvision") is None,
    reason="torchxrayvision is the optional xrv extra (part of the test extra)",
)


def test_importing_xrv_leaves_our_warning_filters_alone() -> None:
    import warnings

    before = list(warnings.filters)
    xrv_import.load_xrv_model("densenet121-res224-all", download_weights=False)
    assert warnings.filters == before


def _real_batch(spec, count: int = 3) -> torch.Tensor:
    folder = require_shared("nih1000", "test", "1_abnormal")
    paths = sorted(folder.glob("*.png"))[:count]
    return torch.from_numpy(np.stack([preprocess(decode_file(path), spec) for path in paths]))


def test_converted_densenet_reproduces_xrv_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    path = xrv_import.convert("densenet121-res224-all", tmp_path / "xrv.ckpt", download_weights=False)
    torch.manual_seed(0)  # the same random initialisation for xrv's own model
    reference, entry = xrv_import.load_xrv_model("densenet121-res224-all", download_weights=False)
    checkpoint = checkpoints.load_checkpoint(path, kind="classifier")
    assert checkpoint["labels"] == entry["labels"] and len(checkpoint["labels"]) == 18
    assert checkpoint["thresholds"]["Effusion"] == pytest.approx(entry["op_threshs"][entry["labels"].index("Effusion")])
    model = XRayClassifier(ClassifierConfig.from_dict(checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    model.eval()
    spec = xrv_import.xrv_spec(224)
    x = _real_batch(spec)
    assert x.min() >= -1024 - 1e-3 and x.max() <= 1024 + 1e-3  # xrv's input convention
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)


def test_unnamed_xrv_outputs_are_dropped_and_missing_thresholds_default(tmp_path) -> None:
    path = xrv_import.convert("densenet121-res224-nih", tmp_path / "nih.ckpt", download_weights=False)
    checkpoint = checkpoints.load_checkpoint(path)
    assert len(checkpoint["labels"]) == 14 and "" not in checkpoint["labels"]
    assert all(0.0 < t <= 0.5 for t in checkpoint["thresholds"].values())
    with pytest.raises(ValueError, match="densenet121-res224-all"):
        xrv_import.convert("resnet50-res512-all", tmp_path / "r.ckpt", download_weights=False)


def test_xray_export_from_torchxrayvision_into_the_registry(tmp_path) -> None:
    csv = require_shared("nih1000", "Data_Entry_subset.csv")
    args = export.get_args_parser().parse_args(
        ["--from-torchxrayvision", "densenet121-res224-all", "--xrv-no-weights", "--name", "xrv-all",
         "--registry", str(tmp_path), "--calibration-data", f"nih:{csv}", "--parity-images", "4",
         "--evaluation-images", "4", "--threads", "2", "--quiet"]
    )  # fmt: skip
    report = export.main(args)
    assert report["parity"]["probabilities"]["max_abs_diff"] <= 1e-4
    manifest = Registry(tmp_path).load_manifest("xrv-all", 1)
    assert len(manifest.labels) == 18
    assert "torchxrayvision" in manifest.provenance
    assert manifest.preprocess["resize"] == "crop" and manifest.preprocess["size"] == 224
    assert not math.isnan(manifest.thresholds["Pneumonia"])
    json.dumps(manifest.model_dump(mode="json"))  # the manifest is plain JSON
