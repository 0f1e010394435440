"""The student: a torchvision ResNet body with a 1x1-conv head whose output is the CAM."""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FEATURES = {"resnet18": 512, "resnet50": 2048, "resnet101": 2048}


def _resnet(backbone: str, weights: str | None) -> nn.Module:
    if backbone not in _FEATURES:
        raise ValueError(f"backbone {backbone!r}: expected one of {sorted(_FEATURES)}")
    builder = getattr(torchvision.models, backbone)
    if weights == "imagenet":  # torchvision's own download; needs the internet or a warm cache
        return builder(weights="DEFAULT")
    model = builder(weights=None)
    if weights:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"train.backbone_weights: {weights} not found")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, _ = model.load_state_dict(state, strict=False)
        missing_body = [k for k in missing if not k.startswith("fc.")]
        if missing_body:
            raise ValueError(f"train.backbone_weights: {weights} lacks {len(missing_body)} "
                             f"{backbone} weights, e.g. {missing_body[0]}")
    return model


class CAMClassifier(nn.Module):
    """forward(x) -> (logits N x C, cams N x C x h x w); the logits are the CAMs' spatial mean."""

    def __init__(self, backbone: str, num_classes: int, weights: str | None = None):
        super().__init__()
        resnet = _resnet(backbone, weights)
        self.body = nn.Sequential(*list(resnet.children())[:-2])
        self.head = nn.Conv2d(_FEATURES[backbone], num_classes, kernel_size=1, bias=False)
        self.backbone = backbone
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cams = self.head(self.body(x))
        return cams.mean(dim=(2, 3)), cams

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        return [{"params": self.body.parameters(), "lr": lr},
                {"params": self.head.parameters(), "lr": lr * head_lr_mult}]


def resize_images(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """uint8 3 x H x W images -> uint8 N x 3 x size x size (aspect is stretched, so the CAM
    grid spans the whole image in both axes). Training inputs are stored in this form."""
    if not images:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return torch.cat([F.interpolate(img.float()[None], size=(size, size), mode="bilinear",
                                    antialias=True, align_corners=False)
                      for img in images]).round().clamp(0, 255).to(torch.uint8)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x S x S -> ImageNet-normalised floats."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def prepare_images(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """uint8 3 x H x W images -> the classifier's input batch."""
    return normalise(resize_images(images, size))


def save_classifier(path: str | Path, model: CAMClassifier, class_names: list[str],
                    image_size: int) -> None:
    """A self-describing checkpoint: weights plus what is needed to rebuild and feed the model.
    A DDP-wrapped model is unwrapped first."""
    model = getattr(model, "module", model)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "backbone": model.backbone, "class_names": list(class_names),
                "image_size": int(image_size)}, path)


def classifier_bytes(model: CAMClassifier, class_names: list[str], image_size: int) -> bytes:
    """save_classifier's file as bytes: what every executor commits as classifier.pt."""
    buffer = io.BytesIO()
    save_classifier(buffer, model, class_names, image_size)
    return buffer.getvalue()


def load_classifier(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[CAMClassifier, list[str], int]:
    """Rebuild a classifier saved by save_classifier (loaded with weights_only=True)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = CAMClassifier(ckpt["backbone"], len(ckpt["class_names"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt["class_names"], ckpt["image_size"]


@torch.no_grad()
def predict(model: CAMClassifier, images: list[torch.Tensor], image_size: int,
            batch_size: int = 32) -> torch.Tensor:
    """Class probabilities (N x C sigmoid) for uint8 images, for inference after training."""
    model.eval()
    device = next(model.parameters()).device
    out = [torch.sigmoid(model(prepare_images(images[i:i + batch_size], image_size).to(device))[0])
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).cpu() if out else torch.zeros(0, model.num_classes)
