"""A standalone classifier: classifier.pt as one `torch.export` program that needs torch only.

The file holds the CAM classifier with its preprocessing, so a user without ccd_ray gets the
same probabilities as `classifier.predict` from raw pixels:

    extra = {"ccd_classifier.json": ""}
    model = torch.export.load("classifier.pt2", extra_files=extra).module()
    meta = json.loads(extra["ccd_classifier.json"])   # class_names, image_size, mean, std
    probs = model(images)      # uint8 N x 3 x H x W (RGB, any N, H, W >= 1) -> float N x C

The program resizes the batch to image_size x image_size (bilinear, antialiased, the aspect
stretched), rounds to uint8 as the training inputs are stored, normalises with the ImageNet
mean and std and returns the sigmoid of the logits, columns in `class_names` order. Its input
guards refuse another dtype or channel count."""

from __future__ import annotations

import io
import json

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.export import Dim

from ccd_ray.method.classifier import IMAGENET_MEAN, IMAGENET_STD, CAMClassifier, load_classifier

STANDALONE_FILE = "classifier.pt2"
METADATA_FILE = "ccd_classifier.json"


class StandaloneClassifier(nn.Module):
    """uint8 N x 3 x H x W RGB images -> class probabilities N x C. The preprocessing repeats
    classifier.resize_images and classifier.normalise on a whole batch (one exportable graph);
    tests/test_export.py checks the two agree."""

    def __init__(self, model: CAMClassifier, image_size: int):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(images.float(), size=(self.image_size, self.image_size),
                                mode="bilinear", antialias=True, align_corners=False)
        pixels = resized.round().clamp(0, 255).to(torch.uint8)
        logits, _ = self.model((pixels.float() / 255.0 - self.mean) / self.std)
        return torch.sigmoid(logits)


def export_standalone(classifier_bytes: bytes) -> bytes:
    """The torch.export file (bytes) of a classifier.pt, with its class names and
    preprocessing in the extra file METADATA_FILE."""
    model, names, image_size = load_classifier(io.BytesIO(classifier_bytes))
    example = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    program = torch.export.export(
        StandaloneClassifier(model, image_size), (example,),
        dynamic_shapes={"images": {0: Dim("batch", min=1), 2: Dim("height", min=1),
                                   3: Dim("width", min=1)}})
    metadata = {"class_names": names, "image_size": image_size, "backbone": model.backbone,
                "input": "uint8 N x 3 x H x W, RGB", "output": "sigmoid probabilities N x C, "
                "columns in class_names order", "resize": "bilinear, antialiased, aspect "
                "stretched to image_size x image_size, rounded to uint8",
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(metadata)})
    return buffer.getvalue()
