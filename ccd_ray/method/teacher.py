"""The frozen CLIP teacher: load an open_clip model, embed the class prompts once, score views."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ccd_ray.config import ClassesConfig, TeacherConfig

MODEL_CONFIG_DIR = Path(__file__).parents[1] / "model_configs"
LOCAL_DIR_PREFIX = "local-dir:"
_LOCAL_DIR_WEIGHTS = "open_clip_model.safetensors"


def _open_clip():
    """Import open_clip with the project's tiny model configs registered."""
    import open_clip

    if "ccd-tiny-vit" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    return open_clip


def _check_weights_exist(cfg: TeacherConfig) -> None:
    """open_clip only warns when weights are missing; random weights must be asked for."""
    if cfg.model.startswith(LOCAL_DIR_PREFIX):
        folder = Path(cfg.model[len(LOCAL_DIR_PREFIX):])
        if not (folder / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"teacher.model: {folder} has no open_clip_config.json")
        if not any(any(folder.glob(p)) for p in ("*.safetensors", "*.bin", "*.pth", "*.pt")):
            raise FileNotFoundError(f"teacher.model: {folder} holds no weights file")
    elif cfg.pretrained and ("/" in cfg.pretrained or cfg.pretrained.endswith(
            (".pt", ".pth", ".bin", ".safetensors"))):
        if not Path(cfg.pretrained).is_file():
            raise FileNotFoundError(
                f"teacher.pretrained: checkpoint file {cfg.pretrained} not found")


def load_clip(cfg: TeacherConfig, device: str | torch.device = "cpu"):
    """Return (model, tokenizer, image_mean, image_std) for cfg; model in eval mode, frozen."""
    open_clip = _open_clip()
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

    open_clip = _open_clip()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = open_clip.get_model_config(model_name)
    preprocess = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / _LOCAL_DIR_WEIGHTS))
    return LOCAL_DIR_PREFIX + str(folder)


def _image_side(model: torch.nn.Module, override: int | None) -> int:
    if override:
        return override
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


@dataclass
class Teacher:
    """A frozen CLIP model with its class text embeddings; `score` maps views to class
    probabilities."""
    model: torch.nn.Module
    text_embeddings: torch.Tensor  # C x D, L2-normalised
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    logit_scale: float
    device: torch.device
    forward_passes: int = 0  # counted so callers can prove that cached work ran no CLIP

    @classmethod
    def from_config(cls, teacher_cfg: TeacherConfig, classes_cfg: ClassesConfig,
                    device: str | torch.device = "cpu") -> "Teacher":
        device = torch.device(device)
        model, tokenizer, mean, std = load_clip(teacher_cfg, device)
        text = embed_prompts(model, tokenizer, classes_cfg.names, classes_cfg.prompt_templates,
                             device)
        return cls(model=model, text_embeddings=text,
                   image_size=_image_side(model, teacher_cfg.image_size), mean=mean, std=std,
                   logit_scale=teacher_cfg.logit_scale, device=device)

    @torch.no_grad()
    def score(self, views: torch.Tensor) -> torch.Tensor:
        """views: N x 3 x S x S, normalised -> N x C softmax probabilities (rows sum to 1)."""
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
        logits = self.logit_scale * features @ self.text_embeddings.T
        return logits.softmax(dim=-1).cpu()

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
