from dataclasses import dataclass, field

import pytest

from orl.config import ConfigError, describe, from_dict, load_config, parse_overrides, to_dict
from orl.config.experiment import ExperimentConfig


@dataclass
class Inner:
    steps: int = 10
    lr: float = 1e-3
    name: str | None = None
    betas: tuple[float, float] = (0.9, 0.99)
    tasks: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    flag: bool = False


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  steps: 20\n  tasks: [x, y]\nflag: true\n")
    cfg = load_config(Outer, path, ["inner.lr=0.5", "inner.name=run1", "inner.betas=[0.8, 0.9]"])
    assert cfg == Outer(Inner(steps=20, lr=0.5, name="run1", betas=(0.8, 0.9), tasks=["x", "y"]), True)
    assert to_dict(cfg)["inner"]["betas"] == [0.8, 0.9]


def test_int_accepted_for_float_but_not_the_reverse():
    assert from_dict(Inner, {"lr": 1}).lr == 1.0
    assert load_config(Outer, None, ["inner.lr=1e-3"]).inner.lr == 1e-3  # YAML 1.1: a string
    with pytest.raises(ConfigError, match=r"inner\.steps: expected int, got 1\.5"):
        from_dict(Inner, {"steps": 1.5}, "inner")
    with pytest.raises(ConfigError, match="expected bool"):
        load_config(Outer, None, ["flag=yes please"])


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["inner.stepz=3"], r"Unknown config key 'inner.stepz'. Did you mean inner.steps\?"),
        (["flg=true"], r"'flg'. Did you mean flag\?"),
        (["inner.tasks=3"], "inner.tasks: expected a list"),
        (["inner.betas=[1]"], "inner.betas: expected 2 values"),
        (["steps"], "not key=value"),
    ],
)
def test_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Outer, None, overrides)


def test_validation_in_sections_is_reported_with_the_key():
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(ExperimentConfig, None, ["train.steps=0"])
    with pytest.raises(ConfigError, match="agent.name must be one of"):
        load_config(ExperimentConfig, None, ["agent.name=gpt"])
    with pytest.raises(ConfigError, match="context_len"):
        load_config(ExperimentConfig, None, ["sampler.context_len=0"])


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_describe_lists_every_leaf_with_default():
    rows = {key: (tp, default) for key, tp, default in describe(ExperimentConfig())}
    assert rows["train.steps"][1] == 2000
    assert rows["sampler.context_len"][1] == 20
    assert rows["data.tasks"][1] == ["MT10"]
    assert all(not key.endswith(("train", "model")) for key in rows)


def test_continual_and_federated_cannot_be_combined():
    from orl.config.experiment import ExperimentConfig

    with pytest.raises(ConfigError, match="cannot be combined"):
        load_config(ExperimentConfig, None, ["continual.enabled=true", "continual.tasks=[OCW10]",
                                             "federated.strategy=fedavg"])
