"""The registry on disk: versioned ONNX models + manifests and their aliases (promote, rollback).

Torch-free: the trainer writes it (`xray export`), the service reads it. The layout is a valid NVIDIA Triton model
repository:

    registry/
      model_set.json                  optional: {"classifier": NAME, "autoencoder": NAME | null} (model_set.py)
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
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from models.registry import model_set
from models.registry.errors import AliasNotFoundError, IntegrityError, ManifestError, ModelNotFoundError, RegistryError
from models.registry.files import sha256_file, utc_now, write_atomic, write_json
from models.registry.manifest import NAME_PATTERN, Manifest, check_alias, check_name
from models.registry.model_set import DEFAULT_ALIAS, ModelSet
from models.registry.triton import triton_config

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
TRITON_CONFIG_FILE = "config.pbtxt"
ALIASES_FILE = "aliases.json"


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
            p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name) and self._version_dirs(p)
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

    # -- the model set (policy in models.registry.model_set) ----------------------------------------------------
    def set_model_set(self, classifier: str, autoencoder: str | None = None) -> dict[str, str | None]:
        return model_set.write_model_set(self, classifier, autoencoder)

    def model_set(self, alias: str = DEFAULT_ALIAS) -> ModelSet:
        return model_set.resolve_model_set(self, alias)

    def int8_variant(self, model: ResolvedModel) -> ResolvedModel | None:
        return model_set.int8_variant(self, model)

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
        write_json(self.root / name / ALIASES_FILE, state)
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
        write_atomic(self.root / name / TRITON_CONFIG_FILE, triton_config(manifest, versions=served))
