"""The model registry: versions, manifests, sha256 integrity, aliases, the model set, Triton config.pbtxt, CLI.

Torch-free like the registry itself: the ONNX files here are tiny real graphs built with onnx.helper and run with
ONNX Runtime; the exported-from-torch path is tested in tests/training/test_export.py.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from models.registry import (
    ALIASES_FILE,
    INT8_SUFFIX,
    MODEL_SET_FILE,
    IntegrityError,
    ManifestError,
    Registry,
    RegistryError,
    triton_config,
)
from xray.cli import app

SIZE = 16
LABELS = ["Abnormal", "Effusion"]


# ------------------------------------------------------------------------------------------------ tiny models


def _classifier_onnx(path: Path, bias: float = 0.0) -> Path:
    """input [N,1,S,S] -> probabilities [N,2] = sigmoid(mean * w + b), cam [N,2,S/4,S/4] (avg-pooled, scaled)."""
    import onnx
    from onnx import TensorProto, helper

    k = len(LABELS)
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, k], [1.0, -1.0])
    b = helper.make_tensor("b", TensorProto.FLOAT, [k], [bias, bias])
    wc = helper.make_tensor("wc", TensorProto.FLOAT, [k, 1, 1, 1], [1.0, -1.0])
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
        helper.make_node("AveragePool", ["input"], ["pool4"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Conv", ["pool4", "wc"], ["cam"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", k]),
            helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", k, SIZE // 4, SIZE // 4]),
        ],
        initializer=[w, b, wc],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _autoencoder_onnx(path: Path) -> Path:
    """input [N,1,S,S] -> error [N] = mean((input - mean(input))^2): a real per-image score graph."""
    import onnx
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mu"], keepdims=1),
        helper.make_node("Sub", ["input", "mu"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2", "axes"], ["error"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_autoencoder_score",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("error", TensorProto.FLOAT, ["N"])],
        initializer=[axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _classifier_fields(**extra) -> dict:
    return {
        "kind": "classifier",
        "labels": LABELS,
        "thresholds": {"Abnormal": 0.4, "Effusion": 0.3},
        "preprocess": {"size": SIZE, "resize": "letterbox", "normalisation": "percentile"},
        "inputs": [{"name": "input", "shape": ["N", 1, SIZE, SIZE]}],
        "outputs": [
            {"name": "probabilities", "shape": ["N", 2]},
            {"name": "cam", "shape": ["N", 2, SIZE // 4, SIZE // 4]},
        ],
        "metrics": {"mean_auroc": 0.71},
        "data": {"sources": ["nih:Data_Entry.csv"], "split_policy": {"val_fraction": 0.1}},
        "provenance": "NIH ChestX-ray14: CC0",
        "created_at": None,
        **extra,
    }


def _autoencoder_fields(**extra) -> dict:
    return {
        "kind": "autoencoder",
        "outlier_threshold": 0.8,
        "preprocess": {"size": SIZE},
        "inputs": [{"name": "input", "shape": ["N", 1, SIZE, SIZE]}],
        "outputs": [{"name": "error", "shape": ["N"]}],
        **extra,
    }


@pytest.fixture
def onnx_files(tmp_path: Path) -> dict[str, Path]:
    return {
        "classifier": _classifier_onnx(tmp_path / "c.onnx"),
        "classifier2": _classifier_onnx(tmp_path / "c2.onnx", bias=0.5),
        "autoencoder": _autoencoder_onnx(tmp_path / "a.onnx"),
    }


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


# ------------------------------------------------------------------------------------------- versions/manifest


def test_add_version_numbers_versions_and_writes_a_complete_manifest(registry, onnx_files) -> None:
    m1 = registry.add_version("chest", onnx_files["classifier"], _classifier_fields())
    m2 = registry.add_version("chest", onnx_files["classifier2"], _classifier_fields())
    registry.add_version("outlier", onnx_files["autoencoder"], _autoencoder_fields())
    assert (m1.version, m2.version) == (1, 2)
    assert registry.list_models() == ["chest", "outlier"]
    assert registry.versions("chest") == [1, 2] and registry.latest("chest") == 2

    folder = registry.root / "chest" / "2"
    assert sorted(p.name for p in folder.iterdir()) == ["config.pbtxt", "manifest.json", "model.onnx"]
    assert (registry.root / "chest" / "config.pbtxt").is_file()  # where Triton reads it
    assert not [p for p in (registry.root / "chest").iterdir() if p.name.startswith(".staging")]

    manifest = registry.load_manifest("chest", 2)
    assert manifest.onnx_sha256 == m2.onnx_sha256 != m1.onnx_sha256
    assert manifest.onnx_bytes == onnx_files["classifier2"].stat().st_size
    assert manifest.intended_use == "research use only"
    assert manifest.precision == "fp32" and manifest.labels == LABELS
    assert datetime.fromisoformat(manifest.created_at).utcoffset().total_seconds() == 0
    assert manifest.output("cam").shape == ["N", 2, 4, 4]

    # the manifest's IO description matches the file: ORT runs it with those names and shapes
    import onnxruntime as ort

    session = ort.InferenceSession(str(registry.model_path("chest", 2)), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 1, SIZE, SIZE)).astype(np.float32)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x}), strict=True))
    assert [o.name for o in manifest.outputs] == list(outputs)
    for spec in manifest.outputs:
        assert list(outputs[spec.name].shape) == [3, *spec.shape[1:]]


def test_a_manifest_whose_sha256_does_not_match_its_onnx_file_is_refused(registry, onnx_files) -> None:
    manifest = registry.add_version("chest", onnx_files["classifier"], _classifier_fields())
    registry.promote("chest", 1)
    model_file = registry.model_path("chest", 1)
    model_file.write_bytes(onnx_files["classifier2"].read_bytes())  # swapped weights, same names and shapes

    with pytest.raises(IntegrityError) as caught:
        registry.load_manifest("chest", 1)
    message = str(caught.value)
    assert manifest.onnx_sha256 in message  # both hashes are named
    from models.registry import sha256_file

    assert sha256_file(model_file) in message and "chest@1" in message
    with pytest.raises(IntegrityError):
        registry.resolve("chest")
    with pytest.raises(IntegrityError):
        registry.promote("chest", 1, "staging")
    assert registry.load_manifest("chest", 1, verify=False).version == 1  # readable for diagnosis only
    rows = registry.describe()
    assert rows[0]["status"].startswith("INTEGRITY FAILURE")

    model_file.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        registry.load_manifest("chest", 1)


def test_invalid_manifests_and_names_are_refused_before_anything_is_written(registry, onnx_files) -> None:
    with pytest.raises(ManifestError, match="kind"):
        registry.add_version("chest", onnx_files["classifier"], _classifier_fields(kind="segmenter"))
    with pytest.raises(ManifestError, match="preprocess"):
        fields = _classifier_fields()
        del fields["preprocess"]
        registry.add_version("chest", onnx_files["classifier"], fields)
    with pytest.raises(ManifestError, match="size"):
        registry.add_version("chest", onnx_files["classifier"], _classifier_fields(preprocess={"size": 4}))
    with pytest.raises(RegistryError, match="sets"):
        registry.add_version("chest", onnx_files["classifier"], _classifier_fields(version=7))
    for bad in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(RegistryError, match="model name"):
            registry.add_version(bad, onnx_files["classifier"], _classifier_fields())
    assert registry.list_models() == []
    with pytest.raises(RegistryError, match="no model"):
        registry.versions("chest")

    registry.add_version("chest", onnx_files["classifier"], _classifier_fields())
    manifest_path = registry.root / "chest" / "1" / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["version"] = 3
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="chest@3"):
        registry.load_manifest("chest", 1)


# --------------------------------------------------------------------------------------------------- aliases


def test_promote_and_rollback_move_the_alias_and_persist_history(registry, onnx_files) -> None:
    for _ in range(3):
        registry.add_version("chest", onnx_files["classifier"], _classifier_fields())
    with pytest.raises(RegistryError, match="no alias"):
        registry.resolve("chest")
    assert registry.promote("chest", 1) is None
    assert registry.promote("chest", 3) == 1
    assert registry.promote("chest", 3) == 3  # no-op: not a second entry to roll back to
    assert registry.promote("chest", 2, alias="staging") is None

    reopened = Registry(registry.root)  # state lives on disk, in aliases.json
    assert reopened.aliases("chest") == {"production": 3, "staging": 2}
    assert reopened.resolve("chest").version == 3
    assert reopened.rollback("chest") == 1
    assert reopened.resolve("chest").version == 1 and reopened.resolve("chest", "staging").version == 2
    with pytest.raises(RegistryError, match="no earlier version"):
        reopened.rollback("chest")
    with pytest.raises(RegistryError, match="no alias"):
        reopened.rollback("chest", "canary")
    with pytest.raises(RegistryError, match="no version 9"):
        reopened.promote("chest", 9)
    with pytest.raises(RegistryError, match="alias"):
        reopened.promote("chest", 1, alias="bad alias!")

    history = json.loads((registry.root / "chest" / ALIASES_FILE).read_text())["history"]
    assert [(h["action"], h["alias"], h["version"], h["previous"]) for h in history] == [
        ("promote", "production", 1, None),
        ("promote", "production", 3, 1),
        ("promote", "staging", 2, None),
        ("rollback", "production", 1, 3),
    ]
    assert all(datetime.fromisoformat(h["at"]) for h in history)


# ------------------------------------------------------------------------------------------------- model set


def test_model_set_resolves_aliases_and_int8_variants_follow_their_parent(registry, onnx_files) -> None:
    registry.add_version("chest", onnx_files["classifier"], _classifier_fields())
    registry.add_version("chest", onnx_files["classifier2"], _classifier_fields())
    registry.add_version("outlier", onnx_files["autoencoder"], _autoencoder_fields())
    int8 = "chest" + INT8_SUFFIX
    registry.add_version(
        int8, onnx_files["classifier"], _classifier_fields(precision="int8", variant_of={"name": "chest", "version": 1})
    )
    registry.add_version(
        int8,
        onnx_files["classifier2"],
        _classifier_fields(precision="int8", variant_of={"name": "chest", "version": 2}),
    )

    with pytest.raises(RegistryError, match="classifiers with that alias"):
        registry.model_set()  # nothing promoted: the service must not guess
    registry.promote("chest", 1)
    registry.promote("chest", 2)
    registry.promote("outlier", 1)
    served = registry.model_set()
    assert (served.classifier.ref, served.autoencoder.ref) == ("chest@2", "outlier@1")
    assert served.classifier_int8.ref == f"{int8}@2" and served.autoencoder_int8 is None
    assert served.classifier.path == registry.root / "chest" / "2" / "model.onnx"
    assert [m.ref for m in served.models()] == ["chest@2", "outlier@1", f"{int8}@2"]

    registry.rollback("chest")
    assert registry.model_set().classifier_int8.ref == f"{int8}@1"  # follows the parent version back

    # a second promoted classifier makes the automatic choice ambiguous; model_set.json settles it
    registry.add_version("other", onnx_files["classifier"], _classifier_fields())
    registry.promote("other", 1)
    with pytest.raises(RegistryError, match="xray models use"):
        registry.model_set()
    registry.set_model_set("other", "outlier")
    assert json.loads((registry.root / MODEL_SET_FILE).read_text()) == {"classifier": "other", "autoencoder": "outlier"}
    served = registry.model_set()
    assert served.classifier.ref == "other@1" and served.classifier_int8 is None
    registry.set_model_set("outlier")
    with pytest.raises(RegistryError, match="not a classifier"):
        registry.model_set()
    with pytest.raises(RegistryError, match="no model"):
        registry.set_model_set("missing")


# --------------------------------------------------------------------------------------------- triton config


def _triton_model_config_class():
    """inference.ModelConfig as in triton-inference-server/common protobuf/model_config.proto (field names and
    numbers copied for the subset we emit, plus neighbours), built as a descriptor: tritonclient is not installed
    here. text_format.Parse is strict: an unknown field, a wrong type or a bad enum name fails."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="xray_test_model_config.proto", package="inference", syntax="proto3")
    data_type = file.enum_type.add(name="DataType")
    for number, name in enumerate(
        "TYPE_INVALID TYPE_BOOL TYPE_UINT8 TYPE_UINT16 TYPE_UINT32 TYPE_UINT64 TYPE_INT8 TYPE_INT16 TYPE_INT32 "
        "TYPE_INT64 TYPE_FP16 TYPE_FP32 TYPE_FP64 TYPE_STRING TYPE_BF16".split()
    ):
        data_type.value.add(name=name, number=number)

    def message(name, fields, oneofs=()):
        msg = file.message_type.add(name=name)
        for oneof in oneofs:
            msg.oneof_decl.add(name=oneof)
        for field_name, number, kind, label, type_name, oneof in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".inference.{type_name}"
            if oneof is not None:
                field.oneof_index = oneof
        return msg

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("ModelTensorReshape", [("shape", 1, F.TYPE_INT64, rep, None, None)])
    message(
        "ModelInput",
        [
            ("name", 1, F.TYPE_STRING, opt, None, None),
            ("data_type", 2, F.TYPE_ENUM, opt, "DataType", None),
            ("dims", 4, F.TYPE_INT64, rep, None, None),
            ("reshape", 5, F.TYPE_MESSAGE, opt, "ModelTensorReshape", None),
            ("is_shape_tensor", 6, F.TYPE_BOOL, opt, None, None),
            ("allow_ragged_batch", 7, F.TYPE_BOOL, opt, None, None),
            ("optional", 8, F.TYPE_BOOL, opt, None, None),
        ],
    )
    message(
        "ModelOutput",
        [
            ("name", 1, F.TYPE_STRING, opt, None, None),
            ("data_type", 2, F.TYPE_ENUM, opt, "DataType", None),
            ("dims", 3, F.TYPE_INT64, rep, None, None),
            ("label_filename", 4, F.TYPE_STRING, opt, None, None),
            ("reshape", 5, F.TYPE_MESSAGE, opt, "ModelTensorReshape", None),
        ],
    )
    message("Latest", [("num_versions", 1, F.TYPE_UINT32, opt, None, None)])
    message("All", [])
    message("Specific", [("versions", 1, F.TYPE_INT64, rep, None, None)])
    message(
        "ModelVersionPolicy",
        [
            ("latest", 1, F.TYPE_MESSAGE, opt, "Latest", 0),
            ("all", 2, F.TYPE_MESSAGE, opt, "All", 0),
            ("specific", 3, F.TYPE_MESSAGE, opt, "Specific", 0),
        ],
        oneofs=("policy_choice",),
    )
    message(
        "ModelDynamicBatching",
        [
            ("preferred_batch_size", 1, F.TYPE_INT32, rep, None, None),
            ("max_queue_delay_microseconds", 2, F.TYPE_UINT64, opt, None, None),
            ("preserve_ordering", 3, F.TYPE_BOOL, opt, None, None),
        ],
    )
    message(
        "ModelConfig",
        [
            ("name", 1, F.TYPE_STRING, opt, None, None),
            ("platform", 2, F.TYPE_STRING, opt, None, None),
            ("version_policy", 3, F.TYPE_MESSAGE, opt, "ModelVersionPolicy", None),
            ("max_batch_size", 4, F.TYPE_INT32, opt, None, None),
            ("input", 5, F.TYPE_MESSAGE, rep, "ModelInput", None),
            ("output", 6, F.TYPE_MESSAGE, rep, "ModelOutput", None),
            ("dynamic_batching", 11, F.TYPE_MESSAGE, opt, "ModelDynamicBatching", 0),
            ("backend", 17, F.TYPE_STRING, opt, None, None),
        ],
        oneofs=("scheduling_choice",),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def _parse_config(text: str):
    from google.protobuf import text_format

    ModelConfig = _triton_model_config_class()
    return text_format.Parse(text, ModelConfig()), ModelConfig


def test_config_pbtxt_parses_as_a_triton_model_config(registry, onnx_files) -> None:
    from google.protobuf import text_format

    for _ in range(2):
        registry.add_version("chest", onnx_files["classifier"], _classifier_fields(max_batch_size=16))
    registry.add_version("outlier", onnx_files["autoencoder"], _autoencoder_fields())

    config, ModelConfig = _parse_config((registry.root / "chest" / "config.pbtxt").read_text())
    assert config.name == "chest" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert list(config.version_policy.specific.versions) == [2]  # nothing promoted: the newest
    assert [(i.name, list(i.dims)) for i in config.input] == [("input", [1, SIZE, SIZE])]  # no batch dim
    assert [(o.name, list(o.dims)) for o in config.output] == [("probabilities", [2]), ("cam", [2, 4, 4])]
    fp32 = ModelConfig.DESCRIPTOR.file.enum_types_by_name["DataType"].values_by_name["TYPE_FP32"].number
    assert {t.data_type for t in [*config.input, *config.output]} == {fp32}

    version_config, _ = _parse_config((registry.root / "chest" / "1" / "config.pbtxt").read_text())
    assert list(version_config.version_policy.specific.versions) == [1]

    registry.promote("chest", 1, "staging")
    registry.promote("chest", 2)
    config, _ = _parse_config((registry.root / "chest" / "config.pbtxt").read_text())
    assert list(config.version_policy.specific.versions) == [1, 2]  # Triton serves what the aliases point at

    # a per-image scalar output: Triton's dims [1] with an empty reshape
    config, _ = _parse_config((registry.root / "outlier" / "config.pbtxt").read_text())
    (error,) = config.output
    assert error.name == "error" and list(error.dims) == [1]
    assert error.HasField("reshape") and list(error.reshape.shape) == []

    # the check is strict: a misspelt field or an unknown type would not pass
    text = triton_config(registry.load_manifest("chest", 1))
    with pytest.raises(text_format.ParseError):
        _parse_config(text.replace("max_batch_size", "max_batch"))
    with pytest.raises(text_format.ParseError):
        _parse_config(text.replace("TYPE_FP32", "TYPE_FLOAT32"))


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_models_list_promote_rollback(registry, onnx_files) -> None:
    runner = CliRunner()
    root = str(registry.root)
    for _ in range(2):
        registry.add_version("chest", onnx_files["classifier"], _classifier_fields())

    result = runner.invoke(app, ["models", "promote", "chest", "1", "--registry", root])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["models", "promote", "chest", "2", "--registry", root])
    assert result.exit_code == 0 and "version 2 (was 1)" in result.output
    result = runner.invoke(app, ["models", "list", "--registry", root, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["name"], r["version"], r["aliases"], r["status"]) for r in rows] == [
        ("chest", 1, [], "ok"),
        ("chest", 2, ["production"], "ok"),
    ]
    result = runner.invoke(app, ["models", "list", "--registry", root])
    assert result.exit_code == 0 and "chest" in result.output

    result = runner.invoke(app, ["models", "rollback", "chest", "--registry", root])
    assert result.exit_code == 0 and "version 1 (rolled back from 2)" in result.output
    assert Registry(root).aliases("chest") == {"production": 1}
    result = runner.invoke(app, ["models", "rollback", "chest", "--registry", root])
    assert result.exit_code == 1 and "no earlier version" in result.output
    result = runner.invoke(app, ["models", "promote", "chest", "7", "--alias", "staging", "--registry", root])
    assert result.exit_code == 1 and "no version 7" in result.output

    result = runner.invoke(app, ["models", "use", "--classifier", "chest", "--registry", root])
    assert result.exit_code == 0, result.output
    assert Registry(root).model_set().classifier.ref == "chest@1"
