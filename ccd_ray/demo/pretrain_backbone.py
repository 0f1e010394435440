"""Supervised pretraining of the student's ResNet body: the synthetic world's ImageNet.

The paper's student starts from an ImageNet-pretrained ResNet, never from scratch: its
features come from labeled images of *other* categories. Here the analog is every shape and
colour combination of the world that is not one of the target classes (90 of them), one
object per image on the same cluttered backgrounds, with a softmax classifier. None of the
target classes is ever shown, so the student learns generic shape and colour features, not
the CCD task. Seeded (bit-identical only at the same torch thread count: unlike the tiny
teacher it trains on every core, a ResNet being too slow on one), and cached as a torchvision
state-dict file (no `fc.*`) named by the spec's hash, loaded through `train.backbone_weights`
like any local checkpoint."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from ccd_ray.demo.pretrain_teacher import spec_key, warmup_cosine
from ccd_ray.demo.scenes import CLASS_STYLES, make_scene
from ccd_ray.method.classifier import normalise


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """Everything the pretrained backbone depends on (its cache key)."""
    seed: int = 0
    backbone: str = "resnet18"
    steps: int = 400
    batch_size: int = 32
    lr: float = 2e-3
    image_side: int = 96                      # the student's train.image_size in the world
    scale: tuple[float, float] = (0.25, 0.7)  # object diameter / image side
    version: int = 1                          # bump when the generator or the loss changes

    def key(self) -> str:
        return spec_key(self)


def pretraining_styles() -> dict[str, tuple[str, tuple[int, int, int]]]:
    """Every (shape, colour) pair of the world that is not a target class."""
    colours = {name.split()[0]: rgb for name, (_, rgb) in CLASS_STYLES.items()}
    shapes = [shape for shape, _ in CLASS_STYLES.values()]
    targets = set(CLASS_STYLES.values())
    return {f"{colour} {shape}": (shape, rgb) for colour, rgb in colours.items()
            for shape in shapes if (shape, rgb) not in targets}


def pretraining_batch(rng: np.random.Generator, spec: BackboneSpec, styles: dict
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B x 3 x S x S normalised images, B class indices), one object per image."""
    names = list(styles)
    images, classes = [], []
    for _ in range(spec.batch_size):
        scene = make_scene(rng, spec.image_side, names, 1, spec.scale, styles=styles)
        images.append(torch.from_numpy(np.ascontiguousarray(scene.image)).permute(2, 0, 1))
        classes.append(names.index(scene.labels[0]))
    return normalise(torch.stack(images)), torch.tensor(classes)


def pretrain_backbone(spec: BackboneSpec, log=print) -> tuple[torch.nn.Module, float]:
    """Train the ResNet on the pretraining classes; returns it and its accuracy on fresh images."""
    styles = pretraining_styles()
    torch.manual_seed(spec.seed)
    model = getattr(torchvision.models, spec.backbone)(weights=None, num_classes=len(styles))
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    schedule = warmup_cosine(optimizer, spec.steps)
    rng = np.random.default_rng(spec.seed)
    started = time.time()
    model.train()
    for step in range(spec.steps):
        images, classes = pretraining_batch(rng, spec, styles)
        loss = F.cross_entropy(model(images), classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == spec.steps - 1:
            log(f"[backbone pretraining] step {step + 1}/{spec.steps} loss {loss.item():.3f} "
                f"({time.time() - started:.0f} s)")
    model.eval()
    with torch.no_grad():
        test_rng = np.random.default_rng(spec.seed + 999)
        correct = total = 0
        for _ in range(4):
            images, classes = pretraining_batch(test_rng, spec, styles)
            correct += int((model(images).argmax(1) == classes).sum())
            total += len(classes)
    return model, correct / total


def backbone_file(cache_dir: str | Path, spec: BackboneSpec) -> Path:
    """Where the backbone of this spec is cached (whether or not it exists yet)."""
    return Path(cache_dir).resolve() / f"synth-backbone-{spec.key()}.pt"


def pretrained_backbone(cache_dir: str | Path, spec: BackboneSpec = BackboneSpec(),
                        log=print) -> str:
    """The path of the pretrained backbone's state dict, trained on first use and cached."""
    path = backbone_file(cache_dir, spec)
    if not path.is_file():
        log(f"[backbone pretraining] no cached backbone at {path}: training one "
            f"({spec.steps} steps, a few CPU minutes, once)")
        model, accuracy = pretrain_backbone(spec, log)
        log(f"[backbone pretraining] accuracy on fresh images of its "
            f"{len(pretraining_styles())} classes: {100 * accuracy:.1f}%")
        body = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(body, partial)
        partial.rename(path)
        path.with_suffix(".json").write_text(json.dumps(
            {**dataclasses.asdict(spec), "accuracy": accuracy}, indent=2))
    return str(path)
