"""The model registry on disk: versioned ONNX models + manifests, aliases, and the model set the service serves.

Torch-free (the serving side reads it). The layout is a valid NVIDIA Triton model repository:

    registry/
      model_set.json                  optional: {"classifier": NAME, "autoencoder": NAME | null}
      <name>/
        config.pbtxt                  Triton's config for this model (rewritten on every add/promote/rollback)
        aliases.json                  {"aliases": {"production": 3}, "stacks": {...}, "history": [...]}
        <version>/                    1, 2, 3, ... (integers, as Triton wants)
          model.onnx                  one self-contained ONNX file (weights embedded)
          manifest.json               everything the service needs to use the model (see `Manifest`)
          config.pbtxt                the same Triton config, describing only this version
      <name>-int8/                    the int8 (QDQ) variant of <name>: its own Triton model, one model.onnx a version
        <version>/manifest.json       precision "int8", variant_of {"name": <name>, "version": v}

Triton reads `<name>/config.pbtxt` and ignores the JSON files. Its `version_policy` lists the versions the aliases
point at (the promoted ones), so Triton and this service serve the same versions; the IO dims are those of the
production version (else the highest aliased, else the newest).

The model set (`Registry.model_set(alias)`):
1. the classifier and autoencoder model names come from `registry/model_set.json` when it exists
   (`Registry.set_model_set`, `xray models use`); otherwise the registry must hold exactly one classifier model and at
   most one autoencoder model (int8 variants aside) with the alias set;
2. each name is resolved through the alias (`resolve`), never "latest": an unpromoted model is not served;
3. the int8 variant of a resolved model NAME@v is the newest version of `NAME-int8` whose manifest says
   `variant_of == NAME@v`, so int8 variants follow their fp32 parent through promotion and rollback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
TRITON_CONFIG_FILE = "config.pbtxt"
ALIASES_FILE = "aliases.json"
MODEL_SET_FILE = "model_set.json"
INT8_SUFFIX = "-int8"
DEFAULT_ALIAS = "production"
INTENDED_USE = "research use only"
MANIFEST_FORMAT = 1
BATCH_DIM = "N"  # the dynamic batch dimension in manifest shapes, e.g. ["N", 1, 224, 224]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_TRITON_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}


# ------------------------------------------------------------------------------------------------------- errors


class RegistryError(Exception):
    """Anything wrong with the registry: missing model/version/alias, bad manifest, integrity failure."""


class ModelNotFoundError(RegistryError, LookupError):
    pass


class AliasNotFoundError(RegistryError, LookupError):
    pass


class ManifestError(RegistryError, ValueError):
    pass


class IntegrityError(RegistryError):
    """The ONNX file's sha256 is not the one its manifest records (a changed, truncated or swapped file)."""


# ----------------------------------------------------------------------------------------------------- manifest


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
    thresholds: dict[str, float] = Field(default_factory=dict)  # per-label operating thresholds on probabilities
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


@dataclass(frozen=True)
class ResolvedModel:
    """A verified model version: its manifest, its ONNX file, and the alias it was reached through (if any)."""

    name: str
    version: int
    manifest: Manifest
    path: Path  # the model.onnx
    alias: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class ModelSet:
    """What the service serves: a classifier, an optional outlier autoencoder, and their int8 variants if any."""

    alias: str
    classifier: ResolvedModel
    autoencoder: ResolvedModel | None = None
    classifier_int8: ResolvedModel | None = None
    autoencoder_int8: ResolvedModel | None = None

    def models(self) -> list[ResolvedModel]:
        found = (self.classifier, self.autoencoder, self.classifier_int8, self.autoencoder_int8)
        return [model for model in found if model is not None]


# ------------------------------------------------------------------------------------------------------ helpers


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(
            f"expected a model name of letters, digits, '_', '-', '.' (starting with a letter or digit, at most "
            f"128 characters), got {name!r}"
        )
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise RegistryError(f"expected an alias like 'production' (a letter, then letters/digits/_/-), got {alias!r}")
    return alias


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: Any) -> None:
    _write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


# ------------------------------------------------------------------------------------------------- triton config


def _dims(shape: Sequence[int | str], what: str) -> list[int]:
    """Manifest shape ["N", d1, ...] -> Triton dims [d1, ...] (without the batch dimension; -1 = variable)."""
    if not shape or shape[0] != BATCH_DIM:
        raise ManifestError(f"expected {what} to have the batch dimension {BATCH_DIM!r} first, got shape {shape}")
    return [d if isinstance(d, int) else -1 for d in shape[1:]]


def _tensor_block(kind: str, spec: TensorSpec) -> str:
    if spec.dtype not in _TRITON_TYPES:
        raise ManifestError(
            f"{kind} {spec.name!r}: dtype {spec.dtype!r} has no Triton type; known {list(_TRITON_TYPES)}"
        )
    dims = _dims(spec.shape, f"{kind} {spec.name!r}")
    lines = [f'    name: "{spec.name}"', f"    data_type: {_TRITON_TYPES[spec.dtype]}"]
    if dims:
        lines.append(f"    dims: [ {', '.join(map(str, dims))} ]")
    else:  # a per-item scalar such as the autoencoder's error [N]: Triton's documented [1] + empty reshape
        lines.append("    dims: [ 1 ]")
        lines.append("    reshape: { shape: [ ] }")
    return "  {\n" + "\n".join(lines) + "\n  }"


def triton_config(
    manifest: Manifest,
    *,
    model_name: str | None = None,
    versions: Iterable[int] | None = None,
    max_queue_delay_microseconds: int = 2000,
) -> str:
    """Triton `config.pbtxt` (protobuf text format of inference.ModelConfig) for an ONNX Runtime model.

    Dims exclude the batch dimension (max_batch_size > 0); `versions` (default: the manifest's) becomes a
    `version_policy { specific { ... } }`.
    """
    name = model_name or manifest.name
    served = sorted(set(versions)) if versions is not None else [manifest.version]
    if not served:
        raise ManifestError(f"expected at least one version to serve for {name}")
    inputs = ",\n".join(_tensor_block("input", spec) for spec in manifest.inputs)
    outputs = ",\n".join(_tensor_block("output", spec) for spec in manifest.outputs)
    return (
        f"# Generated by service.registry for {manifest.ref} ({manifest.kind}, {manifest.precision}); "
        f"{manifest.intended_use}.\n"
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {manifest.max_batch_size}\n"
        f"version_policy: {{ specific: {{ versions: [ {', '.join(map(str, served))} ] }} }}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(max_queue_delay_microseconds)}\n}}\n"
    )


# ------------------------------------------------------------------------------------------------------ registry


class Registry:
    """A registry rooted at a folder (created on first write)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # -- reading -----------------------------------------------------------------------------------------------
    def list_models(self) -> list[str]:
        """Names of the models that have at least one version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name) and self._version_dirs(p)
        )

    def versions(self, name: str) -> list[int]:
        """The model's versions, ascending; ModelNotFoundError when it has none."""
        found = self._version_dirs(self.root / check_name(name))
        if not found:
            raise ModelNotFoundError(f"no model {name!r} in {self.root}; models here: {self.list_models()}")
        return found

    def latest(self, name: str) -> int:
        return self.versions(name)[-1]

    def version_dir(self, name: str, version: int) -> Path:
        if version not in self.versions(name):
            raise ModelNotFoundError(f"{name} has no version {version}; versions: {self.versions(name)}")
        return self.root / name / str(version)

    def model_path(self, name: str, version: int) -> Path:
        return self.version_dir(name, version) / MODEL_FILE

    def load_manifest(self, name: str, version: int, *, verify: bool = True) -> Manifest:
        """The version's manifest; with `verify`, the ONNX file's sha256 must equal the manifest's (IntegrityError)."""
        folder = self.version_dir(name, version)
        manifest_path = folder / MANIFEST_FILE
        try:
            manifest = Manifest.model_validate_json(manifest_path.read_bytes())
        except FileNotFoundError as error:
            raise ManifestError(f"{name}@{version}: {manifest_path} is missing") from error
        except ValidationError as error:
            raise ManifestError(f"{name}@{version}: invalid manifest {manifest_path}: {error}") from error
        if (manifest.name, manifest.version) != (name, version):
            raise ManifestError(
                f"{manifest_path} describes {manifest.ref}, but it sits in the folder of {name}@{version}"
            )
        if verify:
            model_file = folder / MODEL_FILE
            if not model_file.is_file():
                raise IntegrityError(f"{name}@{version}: {model_file} is missing")
            actual = sha256_file(model_file)
            if actual != manifest.onnx_sha256:
                raise IntegrityError(
                    f"{name}@{version}: refusing {model_file}: its sha256 is {actual}, but the manifest records "
                    f"{manifest.onnx_sha256}; the file was changed or replaced after export - re-export the model"
                )
        return manifest

    def get(self, name: str, version: int, *, alias: str | None = None) -> ResolvedModel:
        manifest = self.load_manifest(name, version)
        return ResolvedModel(name, version, manifest, self.model_path(name, version), alias)

    # -- writing -----------------------------------------------------------------------------------------------
    def add_version(self, name: str, model_file: str | Path, fields: dict[str, Any]) -> Manifest:
        """Copy `model_file` in as the next version of `name` with a manifest built from `fields`.

        The registry fills name, version, onnx_sha256, onnx_bytes and created_at (when absent); everything else
        comes from `fields` and is validated before anything is written. The version appears atomically (staged in
        a hidden folder, then renamed), with its own config.pbtxt; the model-level config.pbtxt is refreshed.
        """
        check_name(name)
        source = Path(model_file)
        if not source.is_file():
            raise RegistryError(f"expected an ONNX file to add, {source} does not exist")
        reserved = {"name", "version", "onnx_sha256", "onnx_bytes"} & set(fields)
        if reserved:
            raise RegistryError(f"the registry sets {sorted(reserved)} itself; remove them from the manifest fields")
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
        try:
            data = source.read_bytes()
            (staging / MODEL_FILE).write_bytes(data)
            base = {
                **fields,
                "name": name,
                "onnx_sha256": hashlib.sha256(data).hexdigest(),
                "onnx_bytes": len(data),
                "created_at": fields.get("created_at") or utc_now(),
            }
            for _attempt in range(100):
                version = (self._version_dirs(model_dir) or [0])[-1] + 1
                try:
                    manifest = Manifest.model_validate({**base, "version": version})
                except ValidationError as error:
                    raise ManifestError(f"invalid manifest for {name}: {error}") from error
                (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
                (staging / TRITON_CONFIG_FILE).write_text(triton_config(manifest), encoding="utf-8")
                target = model_dir / str(version)
                if target.exists():  # another writer took this number in the meantime
                    continue
                try:
                    os.rename(staging, target)
                except OSError:
                    if target.exists():
                        continue
                    raise
                break
            else:
                raise RegistryError(f"could not allocate a new version of {name} in {model_dir}")
        finally:
            if staging.exists():
                for child in staging.iterdir():
                    child.unlink()
                staging.rmdir()
        self._write_model_config(name)
        return manifest

    # -- aliases -----------------------------------------------------------------------------------------------
    def aliases(self, name: str) -> dict[str, int]:
        return dict(self._alias_state(name)["aliases"])

    def history(self, name: str) -> list[dict[str, Any]]:
        return list(self._alias_state(name)["history"])

    def promote(self, name: str, version: int, alias: str = DEFAULT_ALIAS) -> int | None:
        """Point `alias` at `version` (verified first). Returns the version it pointed at before (or None)."""
        check_alias(alias)
        self.load_manifest(name, version)  # exists, valid and intact
        state = self._alias_state(name)
        previous = state["aliases"].get(alias)
        if previous == version:
            return previous
        state["aliases"][alias] = version
        state["stacks"].setdefault(alias, []).append(version)
        state["history"].append(
            {"at": utc_now(), "action": "promote", "alias": alias, "version": version, "previous": previous}
        )
        self._save_alias_state(name, state)
        return previous

    def rollback(self, name: str, alias: str = DEFAULT_ALIAS) -> int:
        """Point `alias` back at the version it was promoted to before the current one. Returns that version."""
        check_alias(alias)
        state = self._alias_state(name)
        stack = state["stacks"].get(alias, [])
        if alias not in state["aliases"]:
            raise AliasNotFoundError(f"{name} has no alias {alias!r}; aliases: {state['aliases'] or 'none'}")
        if len(stack) < 2:
            raise RegistryError(
                f"cannot roll back {name} {alias!r}: it has only been promoted to version(s) {stack}, "
                "so there is no earlier version to return to"
            )
        current = stack[-1]
        target = stack[-2]
        self.load_manifest(name, target)  # refuse to roll back onto a damaged or deleted version
        stack.pop()
        state["aliases"][alias] = target
        state["history"].append(
            {"at": utc_now(), "action": "rollback", "alias": alias, "version": target, "previous": current}
        )
        self._save_alias_state(name, state)
        return target

    def resolve(self, name: str, alias: str = DEFAULT_ALIAS) -> ResolvedModel:
        """The verified model version `alias` points at (AliasNotFoundError when the alias is not set)."""
        check_alias(alias)
        aliases = self.aliases(name)
        if alias not in aliases:
            raise AliasNotFoundError(
                f"{name} has no alias {alias!r} (aliases: {aliases or 'none'}; versions: {self.versions(name)}); "
                f"promote one with: xray models promote {name} VERSION --alias {alias}"
            )
        return self.get(name, aliases[alias], alias=alias)

    # -- the model set -----------------------------------------------------------------------------------------
    def set_model_set(self, classifier: str, autoencoder: str | None = None) -> dict[str, str | None]:
        """Record which models the service serves (registry/model_set.json); both must exist."""
        for name in (classifier, autoencoder):
            if name is not None:
                self.versions(name)
        data = {"classifier": classifier, "autoencoder": autoencoder}
        _write_json(self.root / MODEL_SET_FILE, data)
        return data

    def model_set_names(self, alias: str = DEFAULT_ALIAS) -> dict[str, str | None]:
        """{"classifier": NAME, "autoencoder": NAME | None} by the rule in the module docstring."""
        path = self.root / MODEL_SET_FILE
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise RegistryError(f"{path} is not valid JSON: {error}") from error
            if not isinstance(data, dict) or not isinstance(data.get("classifier"), str):
                raise RegistryError(f'expected {path} to hold {{"classifier": NAME, "autoencoder": NAME|null}}')
            return {"classifier": data["classifier"], "autoencoder": data.get("autoencoder")}
        candidates: dict[str, list[str]] = {"classifier": [], "autoencoder": []}
        for name in self.list_models():
            if name.endswith(INT8_SUFFIX) or alias not in self.aliases(name):
                continue
            manifest = self.load_manifest(name, self.aliases(name)[alias], verify=False)
            candidates[manifest.kind].append(name)
        if len(candidates["classifier"]) != 1 or len(candidates["autoencoder"]) > 1:
            raise RegistryError(
                f"cannot choose the model set for alias {alias!r} in {self.root}: classifiers with that alias "
                f"{candidates['classifier']}, autoencoders {candidates['autoencoder']}; name them with "
                "`xray models use --classifier NAME --autoencoder NAME` (writes model_set.json)"
            )
        auto = candidates["autoencoder"]
        return {"classifier": candidates["classifier"][0], "autoencoder": auto[0] if auto else None}

    def model_set(self, alias: str = DEFAULT_ALIAS) -> ModelSet:
        names = self.model_set_names(alias)
        classifier = self.resolve(names["classifier"], alias)
        if classifier.manifest.kind != "classifier":
            raise RegistryError(f"model set: {classifier.ref} is a {classifier.manifest.kind}, not a classifier")
        autoencoder = None
        if names["autoencoder"] is not None:
            autoencoder = self.resolve(names["autoencoder"], alias)
            if autoencoder.manifest.kind != "autoencoder":
                raise RegistryError(
                    f"model set: {autoencoder.ref} is a {autoencoder.manifest.kind}, not an autoencoder"
                )
        return ModelSet(
            alias=alias,
            classifier=classifier,
            autoencoder=autoencoder,
            classifier_int8=self.int8_variant(classifier),
            autoencoder_int8=self.int8_variant(autoencoder) if autoencoder is not None else None,
        )

    def int8_variant(self, model: ResolvedModel) -> ResolvedModel | None:
        """The newest `<name>-int8` version quantised from exactly this model version, or None."""
        name = model.name + INT8_SUFFIX
        if name not in self.list_models():
            return None
        for version in reversed(self.versions(name)):
            manifest = self.load_manifest(name, version, verify=False)
            parent = manifest.variant_of
            if parent is not None and (parent.name, parent.version) == (model.name, model.version):
                return self.get(name, version, alias=model.alias)
        return None

    # -- listing -----------------------------------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        """One row per model version (for `xray models list`): manifest essentials, aliases, integrity."""
        rows = []
        for name in self.list_models():
            aliases = self.aliases(name)
            for version in self.versions(name):
                row: dict[str, Any] = {
                    "name": name,
                    "version": version,
                    "aliases": sorted(a for a, v in aliases.items() if v == version),
                }
                try:
                    manifest = self.load_manifest(name, version)
                    row["status"] = "ok"
                except IntegrityError as error:
                    manifest = self.load_manifest(name, version, verify=False)
                    row["status"] = f"INTEGRITY FAILURE: {error}"
                except ManifestError as error:
                    rows.append({**row, "status": f"BAD MANIFEST: {error}"})
                    continue
                mean_auroc = manifest.metrics.get("mean_auroc")
                row.update(
                    {
                        "kind": manifest.kind,
                        "precision": manifest.precision,
                        "labels": len(manifest.labels),
                        "input_size": manifest.preprocess.get("size"),
                        "mean_auroc": mean_auroc,
                        "created_at": manifest.created_at,
                        "sha256": manifest.onnx_sha256,
                        "variant_of": manifest.variant_of.model_dump() if manifest.variant_of else None,
                    }
                )
                rows.append(row)
        return rows

    # -- internals ---------------------------------------------------------------------------------------------
    @staticmethod
    def _version_dirs(model_dir: Path) -> list[int]:
        if not model_dir.is_dir():
            return []
        return sorted(
            int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and not p.name.startswith("0")
        )

    def _alias_state(self, name: str) -> dict[str, Any]:
        self.versions(name)  # the model must exist
        path = self.root / name / ALIASES_FILE
        if not path.is_file():
            return {"aliases": {}, "stacks": {}, "history": []}
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise RegistryError(f"{path} is not valid JSON: {error}") from error
        for key, empty in (("aliases", {}), ("stacks", {}), ("history", [])):
            state.setdefault(key, empty)
        return state

    def _save_alias_state(self, name: str, state: dict[str, Any]) -> None:
        _write_json(self.root / name / ALIASES_FILE, state)
        self._write_model_config(name)

    def _write_model_config(self, name: str) -> None:
        """`<name>/config.pbtxt`: the IO of the primary version, serving every aliased version with the same IO."""
        aliases = self.aliases(name)
        if DEFAULT_ALIAS in aliases:
            primary = aliases[DEFAULT_ALIAS]
        elif aliases:
            primary = max(aliases.values())
        else:
            primary = self.latest(name)
        manifest = self.load_manifest(name, primary, verify=False)
        signature = (manifest.inputs, manifest.outputs)
        served = {primary}
        for version in set(aliases.values()) - {primary}:
            other = self.load_manifest(name, version, verify=False)
            if (other.inputs, other.outputs) == signature:
                served.add(version)
        _write_atomic(self.root / name / TRITON_CONFIG_FILE, triton_config(manifest, versions=served))
