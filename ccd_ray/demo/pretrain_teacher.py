"""Contrastive pretraining of the tiny open_clip teacher of the synthetic world.

The teacher is trained the way web-scale CLIP is, only small: images paired with captions,
a symmetric contrastive loss. Its two deficiencies are not coded in, they come from the data:
- pretraining images hold one to a few objects at a larger scale than in the target scenes,
  so a global view of a crowded scene is a poor match for any single caption (view
  dependency);
- class frequencies are long-tailed and a caption names only one of the objects present,
  picked in proportion to popularity (as web captions name the salient, common thing), so
  popular classes win the caption and the teacher leans toward them (class bias).

The loss follows the model's family: a model with a logit_bias (`ccd-tiny-sigmoid`, the
SigLIP-style variant, SIGMOID_SPEC) is trained with open_clip's SigLIP loss, any other with
the CLIP loss. Its config starts the bias at -2, the log-odds of a pair being positive when
each image matches one of the batch's 8-10 distinct captions (SigLIP's own -10 is that of one
positive in a 32k batch). The variant's name avoids "siglip": open_clip gives models so named
its T5 tokenizer, which needs `transformers`.

Deterministic from the spec (seeded data stream, seeded init, one intra-op thread) and cached
as an open_clip `local-dir:` checkpoint named by the spec's hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ccd_ray.config import TeacherConfig
from ccd_ray.demo.scenes import CLASS_NAMES, make_scene
from ccd_ray.method.teacher import LOCAL_DIR_PREFIX, embed_prompts, load_clip, save_local_dir


def spec_key(spec) -> str:
    """A pretraining spec's cache key: the hash of all its fields."""
    text = json.dumps(dataclasses.asdict(spec), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 50):
    """Linear warm-up over `warmup` steps, then cosine decay to zero at `steps`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup)
        * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    """Everything the pretrained teacher depends on (its cache key)."""
    seed: int = 0
    model: str = "ccd-tiny-vit"
    steps: int = 700
    batch_size: int = 96
    lr: float = 2e-3
    image_side: int = 64           # the teacher's input size: no resize at pretraining
    max_objects: int = 4           # objects per pretraining image (1..max_objects)
    scale: tuple[float, float] = (0.35, 0.8)  # object diameter / image side
    zipf_exponent: float = 2.0     # class popularity p_c ~ 1 / rank^s
    template: str = "a photo of the {}."
    version: int = 1               # bump when the generator or the loss changes

    def key(self) -> str:
        return spec_key(self)


# The SigLIP-style teacher of the same world: same data and schedule, sigmoid loss and bias.
SIGMOID_SPEC = PretrainSpec(model="ccd-tiny-sigmoid")


def popularity(spec: PretrainSpec, class_names: list[str]) -> np.ndarray:
    """Pretraining class frequencies: Zipf over a seeded order of the classes (so popularity
    is not the order of the class list)."""
    order = np.random.default_rng(spec.seed + 101).permutation(len(class_names))
    weights = np.empty(len(class_names))
    weights[order] = 1.0 / np.arange(1, len(class_names) + 1) ** spec.zipf_exponent
    return weights / weights.sum()


def caption_class(present: list[int], probs: np.ndarray, rng: np.random.Generator) -> int:
    """The one class a caption names: among those present, in proportion to popularity."""
    weights = probs[present] / probs[present].sum()
    return int(present[rng.choice(len(present), p=weights)])


def pretraining_batch(rng: np.random.Generator, spec: PretrainSpec, class_names: list[str],
                      probs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(B x 3 x S x S uint8 images, B caption class indices)."""
    images, captions = [], []
    index = {name: i for i, name in enumerate(class_names)}
    for _ in range(spec.batch_size):
        scene = make_scene(rng, spec.image_side, class_names,
                           int(rng.integers(1, spec.max_objects + 1)), spec.scale, probs)
        present = [index[name] for name in scene.labels]
        captions.append(caption_class(present, probs, rng))
        images.append(torch.from_numpy(np.ascontiguousarray(scene.image)).permute(2, 0, 1))
    return torch.stack(images), torch.tensor(captions)


def multi_positive_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                             captions: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss where every pair with the same caption text is a positive (with a
    handful of captions, most of a batch's "negatives" would otherwise be the same text)."""
    logits = logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features,
                                                                            dim=-1).T
    same = (captions[:, None] == captions[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    image_to_text = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    text_to_image = -(targets * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


def multi_positive_siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                               captions: torch.Tensor, logit_scale: torch.Tensor,
                               logit_bias: torch.Tensor) -> torch.Tensor:
    """open_clip's SigLIP loss (per-pair sigmoid) on L2-normalised features, each distinct
    caption text of the batch once: every image is a positive pair (+1) with its caption's text
    and a negative (-1) with the others. SigLIP's web captions are distinct; here a handful of
    texts repeat, and keeping every copy would weigh a text by its frequency in the batch, so
    a popular class's copies would swamp the rare ones. With distinct captions it is
    SigLipLoss itself. text_features: one row per image (its caption's)."""
    from open_clip.loss import SigLipLoss  # here: importing open_clip costs seconds

    texts, column = torch.unique(captions, return_inverse=True)
    first_row = torch.empty(len(texts), dtype=torch.long)
    first_row[column] = torch.arange(len(captions))  # any row of a caption: all are equal

    class DistinctTextSigLipLoss(SigLipLoss):
        def get_ground_truth(self, device, dtype, num_logits, negative_only=False):
            if negative_only:  # only asked for across devices; this loop runs in one process
                raise ValueError("the multi-positive SigLIP loss supports world_size 1 only")
            positive = column[:, None] == torch.arange(len(texts))[None, :]
            return 2 * positive.to(device=device, dtype=dtype) - 1

    return DistinctTextSigLipLoss()(F.normalize(image_features, dim=-1),
                                    F.normalize(text_features[first_row], dim=-1), logit_scale,
                                    logit_bias)


def family_loss(model: torch.nn.Module, image_features: torch.Tensor,
                text_features: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """The pretraining loss of the model's family: SigLIP's when it has a logit_bias, else
    CLIP's; the scale is clamped at 100 as open_clip's training clamps it."""
    scale = model.logit_scale.exp().clamp(max=100)
    if getattr(model, "logit_bias", None) is not None:
        return multi_positive_siglip_loss(image_features, text_features, captions, scale,
                                          model.logit_bias)
    return multi_positive_clip_loss(image_features, text_features, captions, scale)


def pretrain_teacher(spec: PretrainSpec, class_names: list[str] | None = None,
                     log=print) -> torch.nn.Module:
    """Train the tiny open_clip model from scratch on the synthetic captioned images."""
    names = class_names or CLASS_NAMES
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-reproducible on any machine, and fast for a model this small
    try:
        torch.manual_seed(spec.seed)
        model, tokenizer, mean, std = load_clip(TeacherConfig(model=spec.model, pretrained=None))
        model.train().requires_grad_(True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.05)
        schedule = warmup_cosine(optimizer, spec.steps)
        tokens = tokenizer([spec.template.format(name) for name in names])
        mean_t = torch.tensor(mean).view(1, 3, 1, 1)
        std_t = torch.tensor(std).view(1, 3, 1, 1)
        probs = popularity(spec, names)
        rng = np.random.default_rng(spec.seed)
        started = time.time()
        for step in range(spec.steps):
            images, captions = pretraining_batch(rng, spec, names, probs)
            pixels = (images.float() / 255 - mean_t) / std_t
            image_features = model.encode_image(pixels)
            text_features = model.encode_text(tokens)[captions]
            loss = family_loss(model, image_features, text_features, captions)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 100 == 0 or step == spec.steps - 1:
                log(f"[teacher pretraining] step {step + 1}/{spec.steps} loss {loss.item():.3f} "
                    f"({time.time() - started:.0f} s)")
        return model.eval().requires_grad_(False)
    finally:
        torch.set_num_threads(threads)


def teacher_folder(cache_dir: str | Path, spec: PretrainSpec = PretrainSpec()) -> Path:
    """Where the pretrained teacher of spec is cached (whether or not it exists yet)."""
    return Path(cache_dir).resolve() / f"synth-teacher-{spec.key()}"


def pretrained_teacher(cache_dir: str | Path, spec: PretrainSpec = PretrainSpec(),
                       class_names: list[str] | None = None, log=print) -> str:
    """The `local-dir:` spec of the pretrained teacher, trained on first use and cached."""
    folder = teacher_folder(cache_dir, spec)
    if not (folder / "open_clip_config.json").is_file():
        log(f"[teacher pretraining] no cached teacher at {folder}: training one "
            f"({spec.steps} steps, a few CPU minutes, once)")
        model = pretrain_teacher(spec, class_names, log)
        partial = folder.with_name(folder.name + ".partial")
        save_local_dir(model, spec.model, partial)
        (partial / "pretrain_spec.json").write_text(json.dumps(dataclasses.asdict(spec),
                                                               indent=2))
        partial.rename(folder)
    return LOCAL_DIR_PREFIX + str(folder)


@torch.no_grad()
def class_accuracy(model: torch.nn.Module, spec: PretrainSpec, class_names: list[str],
                   count: int = 500) -> float:
    """Top-1 accuracy on fresh single-object pretraining-style images (a sanity check)."""
    _, tokenizer, mean, std = load_clip(TeacherConfig(model=spec.model, pretrained=None))
    text = embed_prompts(model, tokenizer, class_names, [spec.template], torch.device("cpu"))
    rng = np.random.default_rng(spec.seed + 999)
    uniform = np.full(len(class_names), 1 / len(class_names))
    index = {name: i for i, name in enumerate(class_names)}
    correct = 0
    for _ in range(count):
        scene = make_scene(rng, spec.image_side, class_names, 1, spec.scale, uniform)
        pixels = torch.from_numpy(np.ascontiguousarray(scene.image)).permute(2, 0, 1)[None]
        pixels = (pixels.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
            std).view(1, 3, 1, 1)
        features = F.normalize(model.encode_image(pixels), dim=-1)
        correct += int((features @ text.T).argmax()) == index[scene.labels[0]]
    return correct / count
