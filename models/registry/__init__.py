"""The model registry: the contract between the trainer that writes a model and the server that reads it.

Torch-free, one file a concern:
  manifest.py   the manifest schema (labels, thresholds, preprocessing, IO, metrics, provenance, sha256)
  store.py      `Registry`: versions on disk, integrity checks, aliases, promote/rollback, listing
  model_set.py  which models the service serves, and their int8 variants
  triton.py     Triton `config.pbtxt` text
  errors.py     typed errors
"""

from models.registry.errors import (
    AliasNotFoundError,
    IntegrityError,
    ManifestError,
    ModelNotFoundError,
    RegistryError,
)
from models.registry.files import sha256_file, utc_now
from models.registry.manifest import (
    BATCH_DIM,
    INTENDED_USE,
    MANIFEST_FORMAT,
    Manifest,
    ModelRef,
    TensorSpec,
    check_alias,
    check_name,
)
from models.registry.model_set import DEFAULT_ALIAS, INT8_SUFFIX, MODEL_SET_FILE, ModelSet
from models.registry.store import (
    ALIASES_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    TRITON_CONFIG_FILE,
    Registry,
    ResolvedModel,
)
from models.registry.triton import triton_config

__all__ = [
    "ALIASES_FILE",
    "BATCH_DIM",
    "DEFAULT_ALIAS",
    "INT8_SUFFIX",
    "INTENDED_USE",
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "MODEL_FILE",
    "MODEL_SET_FILE",
    "TRITON_CONFIG_FILE",
    "AliasNotFoundError",
    "IntegrityError",
    "Manifest",
    "ManifestError",
    "ModelNotFoundError",
    "ModelRef",
    "ModelSet",
    "RegistryError",
    "Registry",
    "ResolvedModel",
    "TensorSpec",
    "check_alias",
    "check_name",
    "sha256_file",
    "triton_config",
    "utc_now",
]
