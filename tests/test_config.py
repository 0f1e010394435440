"""Config: defaults, YAML + --set merging, and error messages that name the key and the rule."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from ccd_ray.config import CCDConfig, ConfigError, config_reference, load_config, validate

NAMES = ["classes.names=[cat, dog]"]


def _all_keys(cls=CCDConfig, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _all_keys(hints[f.name], prefix + f.name + ".")
        else:
            yield prefix + f.name


def test_defaults_with_names_validate():
    cfg = load_config(overrides=NAMES)
    assert cfg.classes.names == ["cat", "dog"]
    # every other key keeps its dataclass default
    default = dataclasses.replace(CCDConfig(), classes=cfg.classes)
    assert cfg == default
    assert cfg.labels.alpha == 0.4 and cfg.train.backbone == "resnet18"
    assert validate(cfg) is cfg


def test_defaults_without_names_are_rejected():
    with pytest.raises(ConfigError, match="classes.names"):
        load_config()


def test_yaml_file_and_overrides_merge(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("classes:\n  names: [cat, dog, bird]\n"
                    "labels:\n  alpha: 0.3\n  gamma: 0.5\n"
                    "train:\n  epochs: 5\n")
    cfg = load_config(path, overrides=["labels.alpha=0.2", "train.lr=0.001",
                                       "initial.crop_scale=[0.2, 0.6]"])
    assert cfg.classes.names == ["cat", "dog", "bird"]
    assert cfg.labels.alpha == 0.2          # override beats the file
    assert cfg.labels.gamma == 0.5          # file value kept in the same section
    assert cfg.train.epochs == 5            # file value kept in another section
    assert cfg.train.lr == 0.001
    assert cfg.initial.crop_scale == (0.2, 0.6)
    assert cfg.train.batch_size == CCDConfig().train.batch_size   # untouched default
    assert isinstance(cfg.train.lr, float)


def test_base_dict_is_below_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 7\n")
    base = {"classes": {"names": ["a"]}, "train": {"epochs": 3, "batch_size": 8}}
    cfg = load_config(path, overrides=["train.batch_size=2"], base=base)
    assert (cfg.train.epochs, cfg.train.batch_size) == (7, 2)
    assert base == {"classes": {"names": ["a"]}, "train": {"epochs": 3, "batch_size": 8}}


def test_int_is_accepted_for_float_and_null_for_optional():
    cfg = load_config(overrides=NAMES + ["labels.alpha=1", "teacher.image_size=null",
                                         "teacher.pretrained=models/x.pt"])
    assert cfg.labels.alpha == 1.0 and isinstance(cfg.labels.alpha, float)
    assert cfg.teacher.image_size is None
    assert cfg.teacher.pretrained == "models/x.pt"


def test_unknown_key_names_key_and_lists_allowed():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=NAMES + ["train.epoch=3"])
    msg = str(err.value)
    assert "train.epoch" in msg
    for allowed in ("epochs", "warmup_epochs", "batch_size", "image_size"):
        assert allowed in msg


def test_unknown_top_level_key():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=NAMES + ["trian.epochs=3"])
    assert "trian" in str(err.value) and "train" in str(err.value)


def test_a_renamed_key_names_its_replacement(tmp_path):
    """compute.cam_actors (before phase 2 became one actor pool) is refused with the key that
    replaced it, not only the list of allowed keys."""
    path = tmp_path / "old.yaml"
    path.write_text("classes:\n  names: [a]\ncompute:\n  cam_actors: 2\n")
    with pytest.raises(ConfigError, match=r"'compute.cam_actors' was renamed: use "
                                          r"compute.classifier_actors"):
        load_config(path)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("classes:\n  names: [a]\nlabels:\n  alfa: 0.3\n")
    with pytest.raises(ConfigError, match="labels.alfa"):
        load_config(path)


@pytest.mark.parametrize("item, key", [
    ("train.epochs=abc", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("labels.alpha=high", "labels.alpha"),
    ("compute.use_gpu=3", "compute.use_gpu"),
    ("classes.names=cat", "classes.names"),
    ("initial.crop_scale=[0.1]", "initial.crop_scale"),
    ("train=3", "train"),
])
def test_wrong_type_names_key(item, key):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=NAMES + [item])
    assert str(err.value).startswith(key + ":") or f"'{key}'" in str(err.value)


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(overrides=NAMES + ["train.epochs=true"])


@pytest.mark.parametrize("item, key, bounds", [
    ("labels.alpha=1.5", "labels.alpha", "[0.0, 1.0]"),
    ("train.epochs=0", "train.epochs", "[1, 1000]"),
    ("labels.gamma=-1", "labels.gamma", "[0.0, 10.0]"),
    ("initial.crop_scale=[0.1, 2.0]", "initial.crop_scale", "[0.0, 1.0]"),
])
def test_out_of_range_names_key_and_range(item, key, bounds):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=NAMES + [item])
    msg = str(err.value)
    assert msg.startswith(key) and "out of range" in msg and bounds in msg


def test_bad_choice_lists_choices():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=NAMES + ["labels.aggregation=median"])
    msg = str(err.value)
    assert "labels.aggregation" in msg and "median" in msg
    assert "max" in msg and "mean" in msg
    with pytest.raises(ConfigError) as err:
        load_config(overrides=NAMES + ["relabel.box_mode=centre"])
    assert "largest_component" in str(err.value) and "first_last" in str(err.value)


@pytest.mark.parametrize("items, fragment", [
    (["classes.names=[]"], "at least one class"),
    (["classes.names=[cat, dog, cat]"], "duplicate"),
    (["classes.names=[cat, '  ']"], "non-empty"),
    (["classes.names=[cat, '']"], "non-empty"),
    (NAMES + ["classes.prompt_templates=['a photo of a cat']"], "exactly once"),
    (NAMES + ["classes.prompt_templates=['{} and {}']"], "exactly once"),
    (NAMES + ["classes.prompt_templates=[]"], "at least one template"),
])
def test_class_and_template_constraints(items, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=items)
    assert fragment in str(err.value)
    assert str(err.value).startswith("classes.")


@pytest.mark.parametrize("names, named", [("[Cat, dog, cat]", "['Cat', 'cat']"),
                                           ("[dog, ' dog', bird]", "[' dog', 'dog']")])
def test_class_names_differing_only_in_case_or_spaces_are_duplicates(names, named):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[f"classes.names={names}"])
    assert str(err.value).startswith(f"classes.names: duplicate class names {named}")


def test_cross_key_constraints():
    with pytest.raises(ConfigError, match="crop_scale"):
        load_config(overrides=NAMES + ["initial.crop_scale=[0.6, 0.2]"])
    with pytest.raises(ConfigError, match="crop_scale"):
        load_config(overrides=NAMES + ["initial.crop_scale=[0.0, 0.2]"])
    with pytest.raises(ConfigError, match="warmup_epochs"):
        load_config(overrides=NAMES + ["train.epochs=2", "train.warmup_epochs=3"])
    with pytest.raises(ConfigError, match="warmup_epochs"):
        load_config(overrides=NAMES + ["train.warmup_epochs=0"])
    # without relabel rounds no warm-up is needed
    cfg = load_config(overrides=NAMES + ["train.warmup_epochs=0", "relabel.rounds=0"])
    assert cfg.train.warmup_epochs == 0


@pytest.mark.parametrize("run_id", ["a/b", "a b", ".hidden", "''", "x" * 129, "a$b", "r\u00e9",
                                    "a:b"])
def test_bad_run_id(run_id):
    with pytest.raises(ConfigError, match="run_id"):
        load_config(overrides=NAMES + [f"run_id={run_id}"])


def test_a_long_plain_run_id_is_accepted():
    assert load_config(overrides=NAMES + ["run_id=" + "a.b_c-1" * 18]).run_id.startswith("a.b")


@pytest.mark.parametrize("name", ["a\nb", "a\x00b", "evil\u202egnp.exe", "tab\there"])
def test_class_names_with_control_characters_are_refused(name):
    with pytest.raises(ConfigError, match="control or format character"):
        load_config(base={"classes": {"names": ["cat", name]}})


@pytest.mark.parametrize("key", ["data.output_uri", "data.corpus_uri"])
def test_a_tilde_path_is_refused_not_written_to_a_folder_named_tilde(key):
    with pytest.raises(ConfigError, match=f"{key}: '~/runs' starts with '~'"):
        load_config(overrides=NAMES + [f"{key}=~/runs"])


def test_override_syntax_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=NAMES + ["labels.alpha"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_config_reference_contains_every_key():
    text = config_reference()
    keys = list(_all_keys())
    assert len(keys) > 40
    for key in keys:
        assert f"`{key}`" in text, key
    # one table row per key, plus the two header rows
    assert len(text.splitlines()) == len(keys) + 2
    assert "max/mean" in text


def test_to_dict_round_trips_through_base():
    cfg = load_config(overrides=NAMES + ["labels.alpha=0.25", "relabel.box_mode=first_last"])
    data = cfg.to_dict()
    data["initial"]["crop_scale"] = list(data["initial"]["crop_scale"])
    assert load_config(base=data) == cfg
