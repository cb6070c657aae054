"""`xray calibrate`: a site refits calibration, thresholds and the outlier threshold on its own films; the result is a
new version with the same ONNX file (int8 variant included) that the service serves."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.registry import Registry
from service.app import create_app
from tests.conftest import require_shared
from tests.service.conftest import copy_registry, phantom_png, service_settings
from training import site_calibration


def _calibrate(registry: Registry, *argv: str) -> dict:
    args = site_calibration.get_args_parser().parse_args([*argv, "--registry", str(registry.root), "--quiet"])
    return site_calibration.main(args)


def test_classifier_recalibrated_on_site_films_serves_with_the_same_onnx(tmp_path) -> None:
    registry = copy_registry(tmp_path / "registry")
    before = registry.resolve("chest-classifier")
    result = _calibrate(registry, "--model", "chest-classifier", "--data", "phantoms:240", "--promote")
    after = registry.resolve("chest-classifier")
    assert (after.version, result["manifest"].version) == (before.version + 1, before.version + 1)
    assert after.manifest.onnx_sha256 == before.manifest.onnx_sha256
    carried = set(result["report"]["labels_refitted"])
    assert carried == {"Abnormal", "Effusion", "Cardiomegaly"}  # the labels the phantoms carry
    for label in before.manifest.labels:
        same = after.manifest.thresholds[label] == before.manifest.thresholds[label]
        assert same == (label not in carried), label
    kept = set(before.manifest.calibration["labels"]) - carried
    assert all(after.manifest.calibration["labels"][k] == before.manifest.calibration["labels"][k] for k in kept)
    recalibration = after.manifest.model_extra["recalibration"]
    assert recalibration["source"] == before.ref and recalibration["data"] == ["phantoms:240"]
    assert set(recalibration["check"]["labels"]["Effusion"]) == {"before", "after"}
    int8 = registry.int8_variant(after)
    assert int8 is not None and int8.manifest.thresholds == after.manifest.thresholds
    assert int8.manifest.onnx_sha256 == registry.int8_variant(before).manifest.onnx_sha256

    with TestClient(create_app(service_settings(registry_dir=registry.root))) as client:
        body = client.post("/v1/predict", content=phantom_png(1), headers={"content-type": "image/png"}).json()
    served = body["models"]["classifier"]
    assert (served["name"], served["version"]) == (int8.name, int8.version)
    rows = {row["label"]: row for row in [body["abnormal"], *body["findings"]]}
    assert {k: rows[k]["threshold"] for k in rows} == pytest.approx(after.manifest.thresholds, abs=1e-6)


def test_autoencoder_threshold_refitted_at_the_stated_percentile(tmp_path) -> None:
    registry = copy_registry(tmp_path / "registry")
    before = registry.resolve("chest-outlier-ae")
    result = _calibrate(registry, "--model", "chest-outlier-ae", "--data", "phantoms:200", "--outlier-percentile", "95")
    new = result["manifest"]
    assert new.onnx_sha256 == before.manifest.onnx_sha256 and new.outlier["percentile"] == 95.0
    assert new.outlier_threshold == result["report"]["threshold"] != before.manifest.outlier_threshold
    assert new.outlier["combined"]["threshold"] == result["report"]["combined_threshold"]
    assert new.outlier["feature"]["threshold"] != before.manifest.outlier["feature"]["threshold"]
    assert registry.aliases("chest-outlier-ae")["production"] == before.version  # not promoted unless asked
    int8 = registry.int8_variant(registry.get("chest-outlier-ae", new.version))
    assert int8 is not None and int8.manifest.outlier_threshold == result["report"]["int8_threshold"]


def test_the_int8_variant_and_unknown_models_are_refused(tmp_path) -> None:
    registry = copy_registry(tmp_path / "registry")
    with pytest.raises(ValueError, match="fp32 model"):
        _calibrate(registry, "--model", "chest-classifier-int8", "--data", "phantoms:50")


def test_nih1000_recalibrated_on_another_patient_split(tmp_path) -> None:
    """The shipped classifier recalibrated on NIH1000 split by other patients: thresholds and Platt parameters move,
    the checking half's ECE is reported before and after, and nothing in the manifest names a machine path."""
    csv = require_shared("nih1000", "Data_Entry_subset.csv")
    registry = copy_registry(tmp_path / "registry")
    before = registry.resolve("chest-classifier").manifest
    result = _calibrate(registry, "--model", "chest-classifier", "--data", f"nih:{csv}", "--split-seed", "1")
    after = result["manifest"]
    check = result["report"]["check"]
    assert check["images"] > 300 and set(result["report"]["labels_refitted"]) >= {"Abnormal", "Effusion"}
    assert after.thresholds["Effusion"] != before.thresholds["Effusion"]
    assert after.calibration["labels"]["Effusion"] != before.calibration["labels"]["Effusion"]
    eces = {k: (v["before"]["ece"], v["after"]["ece"]) for k, v in check["labels"].items() if v["after"]["ece"]}
    print("checking-half ECE before -> after:", {k: (round(a, 3), round(b, 3)) for k, (a, b) in eces.items()})
    assert np.mean([b for _, b in eces.values()]) < np.mean([a for a, _ in eces.values()])
    assert str(csv.parent.parent) not in json.dumps(after.model_dump())
