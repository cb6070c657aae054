"""The registry's typed errors: every failure says which model, version or file, and what was expected."""

from __future__ import annotations


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
