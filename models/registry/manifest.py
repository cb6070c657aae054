"""The manifest: what the service needs to use a model version, and where it came from (the trainer-server contract).

Validated with pydantic; torch-free (numpy-only preprocessing check). A manifest sits beside its `model.onnx` in
`registry/<name>/<version>/manifest.json` and records that file's sha256.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.registry.errors import ManifestError, RegistryError

MANIFEST_FORMAT = 1
INTENDED_USE = "research use only"
BATCH_DIM = "N"  # the dynamic batch dimension in manifest shapes, e.g. ["N", 1, 224, 224]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class TensorSpec(BaseModel):
    """One graph input/output: `shape` uses "N" for the dynamic batch dimension, e.g. ["N", 13, 8, 8]."""

    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int | str]
    dtype: str = "float32"
    description: str = ""


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: int


class Manifest(BaseModel):
    """What the service needs to use a model version, and where it came from.

    Extra keys are kept (a newer exporter may add fields); the ones below are checked.
    """

    model_config = ConfigDict(extra="allow")

    format: int = MANIFEST_FORMAT
    kind: Literal["classifier", "autoencoder"]
    name: str
    version: int = Field(ge=1)
    precision: Literal["fp32", "int8"] = "fp32"
    variant_of: ModelRef | None = None  # int8 variants: the fp32 model version they were quantised from
    labels: list[str] = Field(default_factory=list)  # classifier output order
    thresholds: dict[str, float] = Field(default_factory=dict)  # per-label thresholds on calibrated probabilities
    calibration: dict[str, Any] = Field(default_factory=dict)  # models.calibration: per-label Platt parameters
    outlier_threshold: float | None = None  # autoencoder: error above this = outlier
    outlier: dict[str, Any] = Field(default_factory=dict)  # autoencoder: percentile, validation error quantiles
    preprocess: dict[str, Any]  # models.preprocessing.PreprocessSpec.to_dict()
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    cam: dict[str, Any] | None = None  # classifier: {"output", "units", "stride", "shape"}
    architecture: dict[str, Any] = Field(default_factory=dict)  # the model config the checkpoint was built from
    metrics: dict[str, Any] = Field(default_factory=dict)  # held-out metrics from training/evaluation
    data: dict[str, Any] = Field(default_factory=dict)  # training data: sources, split policy, per-split counts
    provenance: str = ""  # data provenance and licences, in words
    intended_use: str = INTENDED_USE
    onnx_sha256: str
    onnx_bytes: int = Field(ge=0)
    opset: int | None = None
    max_batch_size: int = Field(default=32, ge=1)
    created_at: str  # UTC ISO 8601
    source_checkpoint_sha256: str | None = None
    code_version: str = "unknown"  # of the code that trained the model
    export_code_version: str = "unknown"
    export: dict[str, Any] = Field(default_factory=dict)  # the export report: parity, int8 comparison, speed

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        check_name(value)
        return value

    @field_validator("preprocess")
    @classmethod
    def _check_preprocess(cls, value: dict[str, Any]) -> dict[str, Any]:
        from models.preprocessing import PreprocessSpec  # numpy-only, torch-free

        PreprocessSpec.from_dict(value)  # ValueError (-> ValidationError) when the service could not use it
        return value

    @field_validator("onnx_sha256")
    @classmethod
    def _check_sha(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError(f"expected a lowercase hex sha256 (64 characters), got {value!r}")
        return value

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise ManifestError(f"{self.ref} has no output {name!r}; outputs are {[o.name for o in self.outputs]}")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise RegistryError(
            f"expected a model name of letters, digits, '_', '-', '.' (starting with a letter or digit, at most "
            f"128 characters), got {name!r}"
        )
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise RegistryError(f"expected an alias like 'production' (a letter, then letters/digits/_/-), got {alias!r}")
    return alias
