"""One typed, validated config for the method and the job: YAML plus `--set key=value`."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The job's default config: the embedded default's settings, the base of every user config.
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


class ConfigError(ValueError):
    """A config key, type or value is wrong; the message names the key and what is allowed."""


def _knob(default: Any = dataclasses.MISSING, *, choices: tuple | None = None,
          low: float | None = None, high: float | None = None, factory: Any = None,
          help: str = "") -> Any:
    """A dataclass field carrying its allowed values, so validation lives next to the default."""
    metadata = {"choices": choices, "low": low, "high": high, "help": help}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ClassesConfig:
    names: list[str] = _knob(factory=list, help="class names, in output order")
    prompt_templates: list[str] = _knob(
        factory=lambda: ["a photo of the {}."],
        help="prompts with one '{}' for the class name; embeddings are averaged per class")


@dataclass
class TeacherConfig:
    model: str = _knob("ccd-tiny-vit", help="open_clip model name, or 'local-dir:/path' holding "
                       "open_clip_config.json and weights")
    pretrained: str | None = _knob(None, help="open_clip pretrained tag (online) or a checkpoint "
                                   "file; none = random weights (tests only)")
    image_size: int | None = _knob(None, low=16, high=2048,
                                   help="teacher input side; none = the model's own")
    scoring: str = _knob("auto", choices=("auto", "softmax", "sigmoid"),
                         help="'softmax' over classes (CLIP), 'sigmoid' per class with the "
                         "model's logit_bias (SigLIP family), 'auto': sigmoid when the model "
                         "has a logit_bias, else softmax")
    logit_scale: float | None = _knob(None, low=0.0, high=1000.0,
                                      help="multiplier of the cosine similarities; none = the "
                                      "model's own learned scale, exp(model.logit_scale)")
    batch_size: int = _knob(64, low=1, high=65536, help="views per teacher forward pass")


@dataclass
class InitialLabelsConfig:
    """Phase 1: the global view plus random crops, aggregated."""
    random_crops: int = _knob(10, low=0, high=256, help="random crops besides the global view "
                              "(0 = global only, as the authors' code)")
    crop_scale: tuple[float, float] = _knob((0.1, 0.5), low=0.0, high=1.0,
                                            help="area fraction range of a random crop")
    entropy_threshold: float = _knob(2.0, low=0.0, high=100.0,
                                     help="images whose score entropy exceeds it are 'uncertain'")
    uncertain_weight: float = _knob(1.0, low=0.0, high=1.0,
                                    help="BCE weight of uncertain images (1 = no effect)")


@dataclass
class LabelsConfig:
    aggregation: str = _knob("max", choices=("max", "mean"), help="how view scores are pooled")
    alpha: float = _knob(0.4, low=0.0, high=1.0, help="weight of the previous label in the fusion")
    gamma: float = _knob(1.0, low=0.0, high=10.0, help="debias strength (0 = no debiasing)")
    debias: str = _knob("logit_shift", choices=("logit_shift", "divide"),
                        help="'logit_shift': sigmoid(logit(p) - gamma * log b), keeps each "
                        "class's ranking; 'divide': the paper's p / b^gamma clamped to [0, 1]")
    bias_statistic: str = _knob("count", choices=("count", "top1_mean"),
                                help="'count': positives per class (paper); 'top1_mean': mean "
                                "top-1 score per class over confident images (authors' code)")
    threshold: float = _knob(0.5, low=0.0, high=1.0,
                             help="score at which a round's label is output (and a class "
                             "counts as positive for the bias); every class's threshold "
                             "under threshold_rule=fixed")
    threshold_rule: str = _knob("count", choices=("fixed", "rate", "otsu", "count"),
                                help="per-class thresholds of the final labels and the "
                                "classifier, from no ground truth: 'fixed' = labels.threshold "
                                "for all; 'rate' = each class's top k images, k = its score sum; "
                                "'otsu' = Otsu's split of each class's score histogram; 'count' "
                                "= each class's top k images, k = the images Otsu's split of "
                                "the teacher's zero-shot scores gives it")
    final_source: str = _knob("fusion", choices=("pseudo", "classifier", "fusion"),
                              help="scores of final/labels: the last round's pseudo-labels, the "
                              "classifier's probabilities, or alpha * pseudo + (1 - alpha) * "
                              "classifier")
    smoothing_floor: float = _knob(0.0, low=0.0, high=0.5,
                                   help="raise soft targets below it to it (authors: 1/20)")


@dataclass
class RelabelConfig:
    """Phase 2: classifier CAMs pick classes and boxes, the teacher scores box-guided views."""
    rounds: int = _knob(1, low=0, high=100, help="classifier-guided relabel rounds")
    class_selection: str = _knob("threshold", choices=("threshold", "avg_count"),
                                 help="'threshold' on the classifier's sigmoid, or the authors' "
                                 "search for a threshold giving avg_count..avg_count+2 per image")
    selection_threshold: float = _knob(0.5, low=0.0, high=1.0,
                                       help="classifier probability that selects a class")
    avg_count: int = _knob(4, low=1, high=1000, help="classes per image for 'avg_count'")
    cam_threshold: float = _knob(0.5, low=0.0, high=0.99,
                                 help="fraction of the min-max normalised CAM kept as the region")
    box_mode: str = _knob("largest_component", choices=("largest_component", "first_last"),
                          help="true box of the largest region, or the authors' first/last pixel")
    box_offset: float = _knob(0.125, low=0.0, high=1.0,
                              help="box widening per side, as a fraction of the image's long side")
    view_source: str = _knob("random", choices=("cam", "random"),
                             help="'random': as many random crops (initial.crop_scale) as the "
                             "selected classes' boxes would get, the classifier choosing how "
                             "many; 'cam': views around the CAM boxes (the paper's); "
                             "docs/method.md says why random is the default")
    views_per_box: int = _knob(10, low=1, high=256, help="jittered views per box (authors: 1)")
    box_jitter: float = _knob(0.1, low=0.0, high=1.0,
                              help="max shift/scale of a view, as a fraction of the box side")
    cam_resolution: int = _knob(56, low=4, high=1024,
                                help="side of the grid CAMs are upsampled to before boxing")


@dataclass
class TrainConfig:
    backbone: str = _knob("resnet18", choices=("resnet18", "resnet50", "resnet101"),
                          help="torchvision ResNet body of the student")
    backbone_weights: str | None = _knob(None, help="none, 'imagenet' (torchvision, online) "
                                         "or a local state-dict file")
    image_size: int = _knob(224, low=16, high=2048, help="student input side (authors: 448)")
    inputs_encoding: str = _knob("jpeg", choices=("jpeg", "png"),
                                 help="how the resized training inputs are stored (the "
                                 "train-inputs stage); png: lossless, 2.5-3x jpeg's bytes "
                                 "and slower to encode and decode (docs/benchmarks.md)")
    inputs_quality: int = _knob(95, low=1, high=100,
                                help="JPEG quality of the stored training inputs (95: "
                                "img2dataset's default); png ignores it")
    epochs: int = _knob(10, low=1, high=1000, help="total epochs over all rounds")
    warmup_epochs: int = _knob(2, low=0, high=1000, help="epochs before the first relabel; "
                               "the consistency loss is off until then")
    beta: float = _knob(1.0, low=0.0, high=100.0, help="consistency loss weight")
    loss: str = _knob("bce", choices=("bce", "gce"),
                      help="loss towards the soft labels: 'bce', or 'gce' (generalised "
                      "cross-entropy, robust to noisy labels)")
    gce_q: float = _knob(0.7, low=0.01, high=1.0, help="q of train.loss=gce (-> 0: BCE; 1: MAE)")
    lr: float = _knob(1e-4, low=0.0, high=10.0, help="backbone learning rate (Adam)")
    head_lr_mult: float = _knob(10.0, low=0.0, high=1e4, help="CAM head learning-rate factor")
    weight_decay: float = _knob(0.0, low=0.0, high=1.0, help="Adam weight decay")
    batch_size: int = _knob(16, low=1, high=65536, help="per worker")
    shuffle_buffer: int = _knob(1024, low=1, high=10**7,
                                help="rows a worker shuffles through per epoch (a seeded buffer "
                                "over its stream of training rows)")
    holdout_fraction: float = _knob(0.2, low=0.0, high=0.9,
                                    help="images held out of training for evaluation")
    targets: str = _knob("pseudo", choices=("pseudo", "ground_truth"),
                         help="'pseudo': the rounds' labels; 'ground_truth': the corpus's own "
                         "labels (the supervised upper bound of a benchmark)")


@dataclass
class DataConfig:
    corpus_uri: str = _knob("", help="Parquet/WebDataset shards or an image folder (local or s3://)")
    output_uri: str = _knob("outputs", help="where runs are written (local or s3://)")
    s3_endpoint: str | None = _knob(None, help="endpoint of an S3-compatible store")
    s3_region: str = _knob("us-east-1", help="region of the S3 store")
    max_error_fraction: float = _knob(0.05, low=0.0, high=1.0,
                                      help="stop when more images than this fraction are bad")
    max_image_pixels: int = _knob(50_000_000, low=1, high=10**10,
                                  help="larger images are rejected as decompression bombs")
    max_image_side: int = _knob(1024, low=16, high=65536,
                                help="images are shrunk to this long side when decoded")
    files_per_task: int = _knob(64, low=1, high=100000,
                                help="plain image files read per task (image-folder corpora)")
    corpus_format: str = _knob("auto", choices=("auto", "parquet", "webdataset", "images"),
                               help="how the corpus is read; auto: from the files found "
                                    "(docs/corpora.md)")


@dataclass
class ComputeConfig:
    clip_actors: int = _knob(1, low=1, high=10000,
                             help="max teacher actors, phases 1 and 2 (the pool grows to it)")
    classifier_actors: int = _knob(1, low=1, high=10000,
                                   help="max classifier actors (evaluation, predict.py)")
    gpus_per_actor: float = _knob(0.0, low=0.0, high=8.0, help="fractional GPUs are fine")
    cpus_per_actor: float = _knob(1.0, low=0.0, high=256.0, help="CPUs reserved per actor")
    images_per_batch: int = _knob(16, low=1, high=65536, help="images per actor batch")
    train_workers: int = _knob(1, low=1, high=10000, help="Ray Train DDP workers")
    cpus_per_worker: float = _knob(1.0, low=0.0, high=256.0, help="CPUs per Ray Train worker")
    train_max_failures: int = _knob(2, low=0, high=1000,
                                    help="lost Train workers recovered from the last checkpoint")
    use_gpu: bool = _knob(False, help="one GPU per Ray Train worker (DDP over NCCL)")
    device: str = _knob("auto", choices=("auto", "cpu", "cuda"),
                        help="device of the actors' models; auto = cuda when the actor sees one")


@dataclass
class CCDConfig:
    run_id: str = _knob("default", help="names the run; rerunning the same id resumes it")
    seed: int = _knob(0, low=0, high=2**31 - 1,
                      help="seeds crops, jitter, the split, init and shuffles")
    classes: ClassesConfig = field(default_factory=ClassesConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    initial: InitialLabelsConfig = field(default_factory=InitialLabelsConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    relabel: RelabelConfig = field(default_factory=RelabelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _allowed(f: dataclasses.Field) -> str:
    meta = f.metadata
    if meta.get("choices"):
        return "one of " + ", ".join(map(str, meta["choices"]))
    if meta.get("low") is not None:
        return f"a value in [{meta['low']}, {meta['high']}]"
    return "a value of type " + str(f.type)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Return value as the annotated type, or raise ConfigError naming the key."""
    if isinstance(value, _OverrideText):
        takes_text = annotation is str or str in typing.get_args(annotation)
        value = value.text if takes_text and value.value is not None else value.value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    raise ConfigError(f"{key}: unsupported type {annotation}")


# keys of earlier versions: a config that still has one is told what replaced it
RENAMED_KEYS = {
    "compute.cam_actors": "compute.classifier_actors (it sizes the evaluation and predict.py "
                          "pools; a relabel round's CAM boxes now run in the teacher's actors, "
                          "sized by compute.clip_actors)",
}


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    renamed = [prefix + k for k in unknown if prefix + k in RENAMED_KEYS]
    if renamed:
        raise ConfigError(f"'{renamed[0]}' was renamed: use {RENAMED_KEYS[renamed[0]]}")
    if unknown:
        where = f"section '{prefix[:-1]}'" if prefix else "the top level"
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}' in {where}; allowed keys: "
                          + ", ".join(sorted(fields)))
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            # a YAML section whose keys are all commented out
            value = {} if value is None else value
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
            kwargs[name] = _build(annotation, value, key + ".")
        else:
            kwargs[name] = _coerce(key, value, annotation)
    return cls(**kwargs)


def _check_ranges(obj: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_ranges(value, key + ".")
            continue
        meta = f.metadata
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if v is None:
                continue
            if meta.get("choices") and v not in meta["choices"]:
                raise ConfigError(f"{key}: {v!r} is not allowed; expected {_allowed(f)}")
            if meta.get("low") is not None and not (meta["low"] <= v <= meta["high"]):
                raise ConfigError(f"{key}: {v!r} is out of range; expected {_allowed(f)}")


RUN_ID_MAX = 128
RUN_ID = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{RUN_ID_MAX - 1}}}")


def validate(cfg: CCDConfig) -> CCDConfig:
    """Check ranges, choices and the constraints between keys; return cfg unchanged."""
    _check_ranges(cfg)
    names = cfg.classes.names
    if not names:
        raise ConfigError("classes.names: at least one class name is required")
    # 'Cat' and 'cat' would be one class in two output columns (CLIP tokenizers lowercase)
    folded = [n.strip().casefold() for n in names]
    if len(set(folded)) != len(folded):
        dup = sorted({n for n, f in zip(names, folded) if folded.count(f) > 1})
        raise ConfigError(f"classes.names: duplicate class names {dup} (compared ignoring case "
                          "and surrounding spaces); keep one spelling of each")
    if any(not n.strip() for n in names):
        raise ConfigError("classes.names: class names must be non-empty")
    # a name is a column, a prompt and a caption: a newline, NUL or bidirectional override in
    # it would split lines, cut strings or show another name than the one stored
    hidden = [n for n in names if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in n)]
    if hidden:
        raise ConfigError(f"classes.names: {hidden[0]!r} holds a control or format character "
                          "(newline, tab, NUL, bidirectional mark); use printable text")
    if not cfg.classes.prompt_templates:
        raise ConfigError("classes.prompt_templates: at least one template is required")
    for template in cfg.classes.prompt_templates:
        if template.count("{}") != 1:
            raise ConfigError(f"classes.prompt_templates: {template!r} must contain '{{}}' "
                              "exactly once")
    low, high = cfg.initial.crop_scale
    if not 0.0 < low <= high <= 1.0:
        raise ConfigError(f"initial.crop_scale: expected 0 < low <= high <= 1, got {(low, high)}")
    if cfg.train.warmup_epochs > cfg.train.epochs:
        raise ConfigError(f"train.warmup_epochs ({cfg.train.warmup_epochs}) must not exceed "
                          f"train.epochs ({cfg.train.epochs})")
    if cfg.relabel.rounds > 0 and cfg.train.warmup_epochs == 0:
        raise ConfigError("train.warmup_epochs: relabel rounds need a warmed-up classifier; "
                          "set it to at least 1 or set relabel.rounds=0")
    if cfg.relabel.rounds > 0 and cfg.train.warmup_epochs + cfg.relabel.rounds > cfg.train.epochs:
        raise ConfigError(f"train.epochs ({cfg.train.epochs}) must be at least "
                          f"train.warmup_epochs + relabel.rounds ({cfg.train.warmup_epochs} + "
                          f"{cfg.relabel.rounds}): each round is followed by an epoch")
    if cfg.compute.device == "cpu" and cfg.compute.use_gpu:
        raise ConfigError("compute.use_gpu=true contradicts compute.device='cpu': the Train "
                          "workers would train on a GPU; set compute.device to auto (or cuda), "
                          "or compute.use_gpu=false")
    if cfg.compute.device == "cpu" and cfg.compute.gpus_per_actor > 0:
        raise ConfigError(f"compute.gpus_per_actor={cfg.compute.gpus_per_actor} contradicts "
                          "compute.device='cpu': the actors would hold GPUs they never use; set "
                          "compute.device to auto (or cuda), or compute.gpus_per_actor=0")
    if not RUN_ID.fullmatch(cfg.run_id):
        raise ConfigError(f"run_id: {cfg.run_id[:80]!r} must be 1-{RUN_ID_MAX} letters, digits, "
                          "'.', '_' or '-', not starting with '.' (it names a folder and S3 "
                          "prefixes)")
    for key, uri in (("data.corpus_uri", cfg.data.corpus_uri),
                     ("data.output_uri", cfg.data.output_uri)):
        if uri.startswith("~"):
            raise ConfigError(f"{key}: {uri!r} starts with '~', which is not expanded here "
                              "(it would name a folder called '~'); give the full path")
    return cfg


@dataclass(frozen=True)
class _OverrideText:
    """A scalar --set value parsed as YAML, remembering its text for keys that are strings
    (so run_id=2024 or a class named 'yes' stay as typed)."""
    value: Any
    text: str


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. labels.alpha=0.4")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML: {exc}") from None
    if isinstance(value, (bool, int, float)) or value is None:
        value = _OverrideText(value, raw.strip())
    return key.strip().split("."), value


def _merge(base: dict[str, Any], path: list[str], value: Any) -> None:
    node = base
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path)}: '{part}' is not a section")
        node = child
    node[path[-1]] = value


def _deep_update(target: dict[str, Any], source: dict[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = dict(value) if isinstance(value, dict) else value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict[str, Any] | None = None) -> CCDConfig:
    """Build the config: defaults <- base dict <- YAML file <- `key=value` overrides."""
    data: dict[str, Any] = {}
    _deep_update(data, base or {})
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        _deep_update(data, loaded or {})
    for item in overrides:
        keys, value = _parse_override(item)
        _merge(data, keys, value)
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> CCDConfig:
    """A validated config from a (possibly partial) nested dict, e.g. CCDConfig.to_dict()."""
    return validate(_build(CCDConfig, data, ""))


def config_reference() -> str:
    """Markdown table of every key, its default and what is allowed (for the README)."""
    rows = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        instance = cls()
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], prefix + f.name + ".")
                continue
            meta = f.metadata
            allowed = ("/".join(map(str, meta["choices"])) if meta.get("choices") else
                       f"[{meta['low']}, {meta['high']}]" if meta.get("low") is not None else "")
            rows.append(f"| `{prefix}{f.name}` | `{getattr(instance, f.name)!r}` | {allowed} | "
                        f"{meta.get('help', '')} |")

    walk(CCDConfig, "")
    return "\n".join(rows)


if __name__ == "__main__":
    print(config_reference())
