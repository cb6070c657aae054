"""CNN classifiers for radiographs: a shared encoder, one sigmoid logit per label, class activation maps.

One network covers the lecture's three classifier set-ups: the binary "abnormality detected" model (labels
("Abnormal",)), multi-label pathology heads on a shared encoder, and adding a new label's head on a frozen encoder
(`add_head`). Encoders are torchvision backbones built without weights (a user may load an ImageNet file or our
autoencoder's encoder with `load_encoder_weights`) or `small_cnn`, a fast CNN for CPU training.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

BACKBONES: tuple[str, ...] = (
    "small_cnn", "slim_resnet18", "slim_resnet18_s16",
    "resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0",
)  # fmt: skip

# total stride of each encoder's feature map relative to the input
ENCODER_STRIDE: dict[str, int] = {name: 32 for name in BACKBONES} | {"small_cnn": 16, "slim_resnet18_s16": 16}


@dataclass
class ClassifierConfig:
    labels: tuple[str, ...]  # output order, one logit per label, e.g. ("Abnormal", "Effusion", ...)
    backbone: str = "small_cnn"
    input_size: int = 224  # the side of the square input the model was trained on (recorded for export/serving)
    in_channels: int = 1
    width: int = 32  # base width of small_cnn and slim_resnet18 (ignored by torchvision backbones)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.labels, str):
            raise ValueError(f"expected labels to be a sequence of names, got the string {self.labels!r}")
        self.labels = tuple(self.labels)
        if not self.labels:
            raise ValueError("expected at least one label, got none")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"expected distinct labels, got {self.labels}")
        check_backbone(self.backbone)
        if self.in_channels < 1:
            raise ValueError(f"expected in_channels >= 1, got {self.in_channels}")
        if self.width < 1:
            raise ValueError(f"expected width >= 1, got {self.width}")
        if self.input_size < 8:
            raise ValueError(f"expected input_size >= 8, got {self.input_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"expected dropout in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ClassifierConfig fields {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**data)


def check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")


# ---------------------------------------------------------------------------------------------------- encoders


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
            bn=nn.BatchNorm2d(cout),
            relu=nn.ReLU(inplace=True),
        )
    )


def _he_initialised(encoder: nn.Sequential) -> nn.Sequential:
    """Kaiming-normal (fan-out) weights in every convolution, as torchvision's ResNets start."""
    for module in encoder.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return encoder


def small_cnn(in_channels: int = 1, width: int = 32) -> nn.Sequential:
    """4 stages of (3x3 stride-2 conv, 3x3 conv), each conv-BN-ReLU: channels w, 2w, 4w, 8w; total stride 16.

    (B, in_channels, S, S) -> (B, 8w, ceil(S/16), ceil(S/16)); 28 px MedMNIST gives a 2x2 map.
    """
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    cin = in_channels
    for i, mult in enumerate((1, 2, 4, 8), start=1):
        cout = width * mult
        stages[f"stage{i}"] = nn.Sequential(_conv_bn_relu(cin, cout, 2), _conv_bn_relu(cout, cout, 1))
        cin = cout
    return _he_initialised(nn.Sequential(stages))


def slim_resnet18(in_channels: int = 1, width: int = 32, max_pool: bool = True) -> nn.Sequential:
    """ResNet-18's topology (7x7 stride-2 stem, max pool, 4 stages of 2 basic blocks, total stride 32) with stage
    widths w, 2w, 4w, 8w instead of 64..512: w = 64 is torchvision's resnet18 (same module names), w = 16-32 keeps
    its inductive bias at a fraction of the parameters (11.2M at w = 64, 2.8M at 32, 0.7M at 16). Without the max
    pool (`slim_resnet18_s16`) the total stride is 16: 4x4 class activation maps at 64 px instead of 2x2."""
    from torchvision.models.resnet import BasicBlock, conv1x1

    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False),
        bn1=nn.BatchNorm2d(width),
        relu=nn.ReLU(inplace=True),
    )
    if max_pool:
        layers["maxpool"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    inplanes = width
    for i, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2)), start=1):
        planes = width * mult
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers[f"layer{i}"] = nn.Sequential(
            BasicBlock(inplanes, planes, stride, downsample), BasicBlock(planes, planes)
        )
        inplanes = planes
    return _he_initialised(nn.Sequential(layers))


def _replace_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A fresh conv like `conv` (kernel, stride, padding, ...) that takes `in_channels` inputs."""
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )


def build_encoder(backbone: str, in_channels: int = 1, width: int = 32) -> tuple[nn.Module, int]:
    """(encoder, out_channels): the encoder maps (B, in_channels, S, S) -> (B, C, h, w), with no pooling or flatten.

    torchvision backbones are built with weights=None; their first conv takes `in_channels`; submodule names follow
    torchvision ("conv1", "layer1", ... / "features.*") so a torchvision state dict loads key for key.
    """
    check_backbone(backbone)
    if backbone == "small_cnn":
        return small_cnn(in_channels, width), 8 * width
    if backbone in ("slim_resnet18", "slim_resnet18_s16"):
        return slim_resnet18(in_channels, width, max_pool=backbone == "slim_resnet18"), 8 * width
    if backbone.startswith("resnet"):
        net = getattr(torchvision.models, backbone)(weights=None)
        net.conv1 = _replace_conv(net.conv1, in_channels)
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        encoder = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in names))
        return encoder, net.fc.in_features
    if backbone == "densenet121":
        net = torchvision.models.densenet121(weights=None)
        net.features.conv0 = _replace_conv(net.features.conv0, in_channels)
        # torchvision's DenseNet.forward applies a ReLU after `features`
        encoder = nn.Sequential(OrderedDict(features=net.features, relu=nn.ReLU(inplace=False)))
        return encoder, net.classifier.in_features
    # efficientnet_b0: features[0] is Conv2dNormActivation(conv, bn, silu); features end with the 1280-ch 1x1 conv
    net = torchvision.models.efficientnet_b0(weights=None)
    net.features[0][0] = _replace_conv(net.features[0][0], in_channels)
    encoder = nn.Sequential(OrderedDict(features=net.features))
    return encoder, net.classifier[-1].in_features


def first_conv_key(encoder: nn.Module) -> str:
    """State-dict key of the encoder's first convolution weight (the one that sees the input channels)."""
    for name, module in encoder.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    raise ValueError("expected the encoder to contain a Conv2d, found none")


# -------------------------------------------------------------------------------------------------- classifier


class XRayClassifier(nn.Module):
    """Encoder -> global average pool -> dropout -> linear head: one logit per label (independent sigmoids)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder, channels = build_encoder(config.backbone, config.in_channels, config.width)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(channels, len(config.labels))

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # (B, C, h, w)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.features(x).mean(dim=(2, 3))  # (B, C)
        return self._logits(self.dropout(pooled))  # (B, K)

    def _logits(self, pooled: Tensor) -> Tensor:
        """The head, computed one label at a time (a per-row reduction over C, never a K-wide matmul), so a label's
        logit does not depend on how many labels there are: `add_head` leaves the old logits bit-identical."""
        return (pooled[:, None, :] * self.head.weight[None]).sum(dim=-1) + self.head.bias  # (B, K)

    def forward_with_cam(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (B, K) and class activation maps (B, K, h, w) in logit units.

        cam[b, k] = W[k] . f[b, :, i, j] + bias[k], so the spatial mean of cam[b, k] is exactly logit[b, k]: a
        location's value is the logit the image would get if every location looked like that one.
        """
        feats = self.features(x)  # (B, C, h, w)
        logits = self._logits(self.dropout(feats.mean(dim=(2, 3))))  # (B, K)
        cam = torch.einsum("kc,bchw->bkhw", self.head.weight, feats)  # (B, K, h, w)
        cam = cam + self.head.bias[None, :, None, None]
        return logits, cam

    @torch.no_grad()
    def add_head(self, label: str) -> None:
        """Grow the head to K+1 outputs for a new label; the first K rows are copied exactly, the new row is zero.

        Pair with `freeze_encoder()` for the lecture's few-shot recipe: a convex logistic regression on fixed features.
        """
        if label in self.config.labels:
            raise ValueError(f"label {label!r} already has a head; labels are {self.config.labels}")
        old = self.head
        new = nn.Linear(old.in_features, old.out_features + 1, device=old.weight.device, dtype=old.weight.dtype)
        new.weight.zero_()
        new.bias.zero_()
        new.weight[: old.out_features].copy_(old.weight)
        new.bias[: old.out_features].copy_(old.bias)
        new.weight.requires_grad_(old.weight.requires_grad)
        new.bias.requires_grad_(old.bias.requires_grad)
        self.head = new
        self.config = replace(self.config, labels=(*self.config.labels, label))

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Stop (or restart) gradient updates of the encoder; BatchNorm statistics stay fixed while in eval()."""
        for param in self.encoder.parameters():
            param.requires_grad_(not frozen)


class ClassifierWithCam(nn.Module):
    """Export wrapper: `forward(x)` returns `(logits, cam)` (what `torch.onnx.export` traces)."""

    def __init__(self, model: XRayClassifier) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.forward_with_cam(x)


# ---------------------------------------------------------------------------------------------- weight loading

# torchvision's pre-0.4 DenseNet files name "norm.1.weight" what the module now calls "norm1.weight"
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def adapt_first_conv(state_dict: dict[str, Tensor], key: str, in_channels: int) -> dict[str, Tensor]:
    """A copy of `state_dict` whose `key` conv weight (O, I, kh, kw) takes `in_channels` inputs.

    Every new channel gets the sum over the I input channels divided by `in_channels` (for one channel: the plain
    sum), so a grey image fed to all channels responds exactly as it did when fed to every RGB channel.
    """
    if key not in state_dict:
        raise ValueError(f"expected key {key!r} in the state dict, got keys like {list(state_dict)[:5]}")
    weight = state_dict[key]
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-D conv weight at {key!r}, got shape {tuple(weight.shape)}")
    source = weight.shape[1]
    adapted = dict(state_dict)
    if source == in_channels:
        return adapted
    summed = weight.sum(dim=1, keepdim=True)  # (O, 1, kh, kw)
    adapted[key] = summed if in_channels == 1 else (summed / in_channels).repeat(1, in_channels, 1, 1)
    return adapted


def _normalise_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip wrappers (`module.`, `model.`), keep only `encoder.*` when present, rename old DenseNet keys."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    if any(key.startswith("encoder.") for key in out):
        out = {key[len("encoder.") :]: value for key, value in out.items() if key.startswith("encoder.")}
    return {_DENSENET_OLD_KEY.sub(r"\1\2", key): value for key, value in out.items()}


def load_encoder_weights(model: XRayClassifier, state_dict: dict[str, Tensor], *, strict: bool = False) -> list[str]:
    """Load encoder weights from a torchvision state dict or from our autoencoder/classifier (`encoder.*` keys).

    The first conv is adapted to the model's input channels (`adapt_first_conv`). Keys that do not belong to the
    encoder (fc, classifier, decoder, head) are ignored. Returns the encoder keys loaded. With `strict`, every encoder
    tensor must be loaded with a matching shape (BatchNorm's `num_batches_tracked` counters, absent from old
    torchvision files, are exempt). Raises ValueError when nothing matched.
    """
    target = model.encoder.state_dict()
    source = _normalise_keys(state_dict)
    first = first_conv_key(model.encoder)
    if first in source and source[first].ndim == 4 and source[first].shape[1] != target[first].shape[1]:
        source = adapt_first_conv(source, first, target[first].shape[1])
    loaded: list[str] = []
    mismatched: list[str] = []
    update: dict[str, Tensor] = {}
    for key, value in target.items():
        if key not in source:
            continue
        incoming = source[key]
        if tuple(incoming.shape) != tuple(value.shape):
            mismatched.append(f"{key}: expected {tuple(value.shape)}, got {tuple(incoming.shape)}")
            continue
        update[key] = incoming.detach().to(dtype=value.dtype, device=value.device)
        loaded.append(key)
    if not loaded:
        raise ValueError(
            f"no encoder weights matched for backbone {model.config.backbone!r}: expected keys like "
            f"{list(target)[:4]}, got keys like {list(state_dict)[:4]}"
            + (f"; shape mismatches: {mismatched[:3]}" if mismatched else "")
        )
    if strict:
        missing = [key for key in target if key not in update and not key.endswith("num_batches_tracked")]
        if missing or mismatched:
            raise ValueError(
                f"strict load: {len(missing)} encoder tensors not loaded (e.g. {missing[:3]}); "
                f"shape mismatches: {mismatched[:3]}"
            )
    model.encoder.load_state_dict({**target, **update}, strict=True)
    return loaded
