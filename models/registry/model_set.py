"""The model set: which classifier and outlier autoencoder the service serves, and their int8 variants.

1. the classifier and autoencoder model names come from `registry/model_set.json` when it exists
   (`write_model_set`, `xray models use`); otherwise the registry must hold exactly one classifier model and at
   most one autoencoder model (int8 variants aside) with the alias set;
2. each name is resolved through the alias (`Registry.resolve`), never "latest": an unpromoted model is not served;
3. the int8 variant of a resolved model NAME@v is the newest version of `NAME-int8` whose manifest says
   `variant_of == NAME@v`, so int8 variants follow their fp32 parent through promotion and rollback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from models.registry.errors import RegistryError
from models.registry.files import write_json

if TYPE_CHECKING:
    from models.registry.store import Registry, ResolvedModel

MODEL_SET_FILE = "model_set.json"
INT8_SUFFIX = "-int8"
DEFAULT_ALIAS = "production"


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


def write_model_set(registry: Registry, classifier: str, autoencoder: str | None = None) -> dict[str, str | None]:
    """Record which models the service serves (registry/model_set.json); both must exist."""
    for name in (classifier, autoencoder):
        if name is not None:
            registry.versions(name)
    data = {"classifier": classifier, "autoencoder": autoencoder}
    write_json(registry.root / MODEL_SET_FILE, data)
    return data


def model_set_names(registry: Registry, alias: str = DEFAULT_ALIAS) -> dict[str, str | None]:
    """{"classifier": NAME, "autoencoder": NAME | None} by the rule in this module's docstring."""
    path = registry.root / MODEL_SET_FILE
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise RegistryError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(data, dict) or not isinstance(data.get("classifier"), str):
            raise RegistryError(f'expected {path} to hold {{"classifier": NAME, "autoencoder": NAME|null}}')
        return {"classifier": data["classifier"], "autoencoder": data.get("autoencoder")}
    candidates: dict[str, list[str]] = {"classifier": [], "autoencoder": []}
    for name in registry.list_models():
        if name.endswith(INT8_SUFFIX) or alias not in registry.aliases(name):
            continue
        manifest = registry.load_manifest(name, registry.aliases(name)[alias], verify=False)
        candidates[manifest.kind].append(name)
    if len(candidates["classifier"]) != 1 or len(candidates["autoencoder"]) > 1:
        raise RegistryError(
            f"cannot choose the model set for alias {alias!r} in {registry.root}: classifiers with that alias "
            f"{candidates['classifier']}, autoencoders {candidates['autoencoder']}; name them with "
            "`xray models use --classifier NAME --autoencoder NAME` (writes model_set.json)"
        )
    auto = candidates["autoencoder"]
    return {"classifier": candidates["classifier"][0], "autoencoder": auto[0] if auto else None}


def resolve_model_set(registry: Registry, alias: str = DEFAULT_ALIAS) -> ModelSet:
    names = model_set_names(registry, alias)
    classifier = registry.resolve(names["classifier"], alias)
    if classifier.manifest.kind != "classifier":
        raise RegistryError(f"model set: {classifier.ref} is a {classifier.manifest.kind}, not a classifier")
    autoencoder = None
    if names["autoencoder"] is not None:
        autoencoder = registry.resolve(names["autoencoder"], alias)
        if autoencoder.manifest.kind != "autoencoder":
            raise RegistryError(f"model set: {autoencoder.ref} is a {autoencoder.manifest.kind}, not an autoencoder")
    return ModelSet(
        alias=alias,
        classifier=classifier,
        autoencoder=autoencoder,
        classifier_int8=int8_variant(registry, classifier),
        autoencoder_int8=int8_variant(registry, autoencoder) if autoencoder is not None else None,
    )


def int8_variant(registry: Registry, model: ResolvedModel) -> ResolvedModel | None:
    """The newest `<name>-int8` version quantised from exactly this model version, or None."""
    name = model.name + INT8_SUFFIX
    if name not in registry.list_models():
        return None
    for version in reversed(registry.versions(name)):
        manifest = registry.load_manifest(name, version, verify=False)
        parent = manifest.variant_of
        if parent is not None and (parent.name, parent.version) == (model.name, model.version):
            return registry.get(name, version, alias=model.alias)
    return None
