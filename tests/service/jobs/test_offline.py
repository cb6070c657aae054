"""`xray score` as a real command: a folder, a zip and a file scored into CSV and JSON lines, then `--resume`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import PROJECT_ROOT
from tests.service.conftest import phantom_png


def _score(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XRAY_REGISTRY_DIR": str(PROJECT_ROOT / "registry"), "XRAY_INTRA_OP_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "xray", "score", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_xray_score_writes_every_file_once_and_resumes(tmp_path: Path) -> None:
    folder = tmp_path / "films"
    (folder / "nested").mkdir(parents=True)
    for i in range(3):
        (folder / f"film{i}.png").write_bytes(phantom_png(seed=i))
    (folder / "nested" / "notes.txt").write_text("not an image")
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as archive:
        archive.writestr("z/one.png", phantom_png(seed=7))
    single = tmp_path / "single.png"
    single.write_bytes(phantom_png(seed=8))

    first = _score([str(folder), "-o", "out.csv"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert "3 scored, 1 failed, 0 already" in first.stdout and "images/s)" in first.stdout
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(row["reference"]).name for row in rows] == ["film0.png", "film1.png", "film2.png", "notes.txt"]
    assert rows[3]["error_code"] == "not_an_image" and rows[0]["outlier_verdict"] in ("in_distribution", "outlier")
    assert all(0.0 <= float(rows[0][name]) <= 1.0 for name in rows[0] if name.startswith("p_"))

    again = _score([str(folder), str(tmp_path / "more.zip"), str(single), "-o", "out.csv", "--resume"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "2 scored, 0 failed, 4 already" in again.stdout
    with open(tmp_path / "out.csv", newline="") as handle:
        references = [row["reference"] for row in csv.DictReader(handle)]
    assert len(references) == len(set(references)) == 6
    assert any(reference.endswith("more.zip:z/one.png") for reference in references)

    jsonl = _score([str(single), "-o", "out.jsonl"], tmp_path)
    assert jsonl.returncode == 0, jsonl.stderr
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row["state"] == "succeeded" and row["result"]["image"]["format"] == "png"

    refused = _score([str(tmp_path / "missing"), "-o", "out.csv"], tmp_path)
    assert refused.returncode == 2 and "missing" in refused.stderr
