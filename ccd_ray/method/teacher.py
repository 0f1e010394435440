"""The frozen CLIP teacher: load an open_clip model, embed the class prompts once, score views.

Scores follow the model's family, as open_clip's own `get_logits`: logits are
`scale * cos(image, class text) + bias`, with scale the model's learned exp(logit_scale)
unless teacher.logit_scale sets one, and bias the model's logit_bias (0 when it has none).
A CLIP model is scored with a softmax over the classes (the bias cancels there), a SigLIP-style
model, trained with a per-pair sigmoid loss, with a per-class sigmoid (teacher.scoring=auto
picks by whether the model has a logit_bias)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ccd_ray.config import ClassesConfig, TeacherConfig
from ccd_ray.preflight import LOCAL_DIR_PREFIX, teacher_files_problem

MODEL_CONFIG_DIR = Path(__file__).parents[1] / "model_configs"
_LOCAL_DIR_WEIGHTS = "open_clip_model.safetensors"


def open_clip_with_configs():
    """Import open_clip with the project's tiny model configs registered."""
    import open_clip

    if "ccd-tiny-vit" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    return open_clip


def _check_weights_exist(cfg: TeacherConfig) -> None:
    """open_clip only warns when weights are missing; random weights must be asked for. The
    same check the job's preflight makes, for callers that skip it (sweeps, tests)."""
    problem = teacher_files_problem(cfg)
    if problem:
        raise FileNotFoundError(problem)


def load_clip(cfg: TeacherConfig, device: str | torch.device = "cpu"):
    """Return (model, tokenizer, image_mean, image_std) for cfg; model in eval mode, frozen."""
    open_clip = open_clip_with_configs()
    _check_weights_exist(cfg)
    model = open_clip.create_model(
        cfg.model,
        pretrained=None if cfg.model.startswith(LOCAL_DIR_PREFIX) else cfg.pretrained,
        device=device,
        weights_only=True,
    )
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(cfg.model)
    preprocess = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))
    return model, tokenizer, mean, std


def save_local_dir(model: torch.nn.Module, model_name: str, folder: str | Path) -> str:
    """Write model as an open_clip `local-dir:` folder (config JSON + safetensors); return its
    teacher.model spec."""
    from safetensors.torch import save_file

    open_clip = open_clip_with_configs()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = open_clip.get_model_config(model_name)
    preprocess = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / _LOCAL_DIR_WEIGHTS))
    return LOCAL_DIR_PREFIX + str(folder)


def _model_scalar(model: torch.nn.Module, name: str) -> float | None:
    """A scalar parameter of the model (logit_scale, logit_bias) as a float; None when the
    model has none (open_clip sets logit_bias to None on CLIP models)."""
    value = getattr(model, name, None)
    if value is None:
        return None
    if value.numel() != 1:
        raise ValueError(f"teacher: model.{name} has {value.numel()} values; only a scalar "
                         f"{name} is supported")
    return float(value.detach().float().reshape(()))


def scoring_rule(model: torch.nn.Module, cfg: TeacherConfig) -> tuple[str, float, float]:
    """(softmax or sigmoid, logit scale, logit bias) of cfg on this model: the model's own
    learned scale when teacher.logit_scale is none, its logit_bias (0 without one), and for
    teacher.scoring=auto sigmoid exactly when the model has a logit_bias."""
    learned_scale = _model_scalar(model, "logit_scale")
    if cfg.logit_scale is None and learned_scale is None:
        raise ValueError(f"teacher.logit_scale is none (the model's learned scale) but "
                         f"{cfg.model} has no logit_scale; set teacher.logit_scale to a number")
    scale = math.exp(learned_scale) if cfg.logit_scale is None else float(cfg.logit_scale)
    bias = _model_scalar(model, "logit_bias")
    scoring = cfg.scoring
    if scoring == "auto":
        scoring = "softmax" if bias is None else "sigmoid"
    if scoring == "sigmoid" and bias is None:
        raise ValueError(f"teacher.scoring=sigmoid needs a model with a logit_bias (SigLIP "
                         f"family); {cfg.model} has none: use teacher.scoring=auto or softmax")
    if scoring not in ("softmax", "sigmoid"):
        raise ValueError(f"teacher.scoring {scoring!r}: expected auto, softmax or sigmoid")
    return scoring, scale, 0.0 if bias is None else bias


def _image_side(model: torch.nn.Module, override: int | None) -> int:
    if override:
        return override
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


@dataclass
class Teacher:
    """A frozen CLIP model with its class text embeddings; `score` maps views to class
    probabilities (softmax over classes, or per-class sigmoid: see the module docstring)."""
    model: torch.nn.Module
    text_embeddings: torch.Tensor  # C x D, L2-normalised
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    logit_scale: float
    device: torch.device
    forward_passes: int = 0  # counted so callers can prove that cached work ran no CLIP
    scoring: str = "softmax"  # resolved: "softmax" or "sigmoid", never "auto"
    logit_bias: float = 0.0

    @classmethod
    def from_config(cls, teacher_cfg: TeacherConfig, classes_cfg: ClassesConfig,
                    device: str | torch.device = "cpu") -> "Teacher":
        device = torch.device(device)
        model, tokenizer, mean, std = load_clip(teacher_cfg, device)
        scoring, scale, bias = scoring_rule(model, teacher_cfg)
        text = embed_prompts(model, tokenizer, classes_cfg.names, classes_cfg.prompt_templates,
                             device)
        return cls(model=model, text_embeddings=text,
                   image_size=_image_side(model, teacher_cfg.image_size), mean=mean, std=std,
                   logit_scale=scale, device=device, scoring=scoring, logit_bias=bias)

    @torch.no_grad()
    def score(self, views: torch.Tensor) -> torch.Tensor:
        """views: N x 3 x S x S, normalised -> N x C probabilities in [0, 1]: a softmax over
        classes (rows sum to 1) or an independent sigmoid per class."""
        if views.ndim != 4 or views.shape[1] != 3:
            raise ValueError(f"views must be N x 3 x H x W, got {tuple(views.shape)}")
        if views.shape[0] == 0:
            return torch.zeros(0, self.text_embeddings.shape[0])
        self.forward_passes += 1
        views = views.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16,
                            enabled=self.device.type == "cuda"):
            features = self.model.encode_image(views)
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        logits = self.logit_scale * features @ self.text_embeddings.T + self.logit_bias
        if self.scoring == "sigmoid":
            return torch.sigmoid(logits).cpu()
        if self.scoring == "softmax":
            return logits.softmax(dim=-1).cpu()
        raise ValueError(f"Teacher.scoring {self.scoring!r}: expected softmax or sigmoid")

    def score_batched(self, views: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Score many views in forward passes of at most batch_size."""
        chunks = [self.score(views[i:i + batch_size]) for i in range(0, len(views), batch_size)]
        return torch.cat(chunks) if chunks else self.score(views)


@torch.no_grad()
def embed_prompts(model: torch.nn.Module, tokenizer, class_names: list[str],
                  templates: list[str], device: torch.device) -> torch.Tensor:
    """C x D: each class's template embeddings, L2-normalised, averaged, normalised again."""
    per_class = []
    for name in class_names:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        emb = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
        per_class.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
    return torch.stack(per_class)
