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
    with pytest.raises(ConfigError, match=r"^sampler\.context_len must be > 0"):
        load_config(ExperimentConfig, None, ["sampler.context_len=0"])
    with pytest.raises(ConfigError, match=r"^sampler\.prompt_source must be one of"):
        load_config(ExperimentConfig, None, ["sampler.prompt_source=foo"])


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


# one key of every section (nested ones too), with a value other than its default
ONE_KEY = {
    "agent": ("task_embedding", "false"),
    "agent.harmodt": ("sparsity", "0.3"),
    "data": ("episodes", "7"),
    "model": ("dropout", "0.2"),
    "sampler": ("batch_size", "16"),
    "train": ("steps", "1500"),
    "eval": ("episodes", "3"),
    "run": ("seed", "5"),
    "continual": ("lora_rank", "4"),
    "federated": ("rounds", "7"),
}


def _sections(cfg, prefix=""):
    """Dotted names of the nested sections of a config instance."""
    out = []
    for name, value in vars(cfg).items():
        if hasattr(value, "__dataclass_fields__"):
            out += [prefix + name, *_sections(value, f"{prefix}{name}.")]
    return out


def _options(cfg):
    return {key: value for key, _, value in describe(cfg)}


def test_every_section_has_a_one_key_case():
    assert sorted(ONE_KEY) == sorted(_sections(ExperimentConfig()))


@pytest.mark.parametrize("section", sorted(ONE_KEY))
def test_one_key_override_keeps_the_other_keys_of_its_section(section):
    """The values --help shows (ExperimentConfig()) are the values used for every key not given."""
    key, value = ONE_KEY[section]
    shown = _options(ExperimentConfig())
    used = _options(load_config(ExperimentConfig, None, [f"{section}.{key}={value}"]))
    changed = f"{section}.{key}"
    assert used[changed] != shown[changed]
    assert {k: v for k, v in used.items() if k != changed} == {
        k: v for k, v in shown.items() if k != changed}


def test_yaml_with_a_partial_section_keeps_the_shown_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {steps: 500}\nsampler: {batch_size: 8}\n")
    cfg = load_config(ExperimentConfig, path)
    shown = ExperimentConfig()
    assert (cfg.train.steps, cfg.train.lr, cfg.train.warmup_steps) == (500, shown.train.lr,
                                                                        shown.train.warmup_steps)
    assert (cfg.sampler.batch_size, cfg.sampler.rtg_scale) == (8, shown.sampler.rtg_scale)


def test_help_shows_the_values_used():
    from orl.cli import _train_agent_help

    text = _train_agent_help()
    cfg = load_config(ExperimentConfig, None, ["train.steps=10"])
    for key in ("train.lr", "train.warmup_steps", "sampler.rtg_scale", "sampler.batch_size"):
        section, name = key.split(".")
        assert f"{getattr(getattr(cfg, section), name)!r}" in next(
            line for line in text.splitlines() if line.split()[:1] == [key])
    # the type column starts at one place, however long a key is
    options = text.splitlines()[1:]
    assert len({line.index(line.split()[1], 2 + len(line.split()[0])) for line in options}) == 1


@pytest.mark.parametrize("override, suggestion", [
    ("model.context_len=20", "sampler.context_len"),  # another section's key
    ("contxt_len=20", "sampler.context_len"),  # misspelled, at the top level
    ("model.emb_dim=8", "model.embed_dim"),  # its own section first
])
def test_unknown_key_suggests_a_close_key_of_any_section(override, suggestion):
    with pytest.raises(ConfigError, match=rf"Did you mean {suggestion}\?"):
        load_config(ExperimentConfig, None, [override])


@pytest.mark.parametrize("override, message", [
    ("train.steps=0", "train.steps must be > 0, got 0"),  # named once, not "train: train.steps"
    ("eval.max_steps=0", "eval.max_steps must be > 0 (null: the env's limit), got 0"),
    ("model.n_head=3", "model.embed_dim (64) must be divisible by model.n_head (3)"),
    ("model.activation=swish", "model.activation must be one of ['gelu', 'relu'], got 'swish'"),
])
def test_section_checks_name_the_key_once(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(ExperimentConfig, None, [override])
    assert str(err.value) == message


def test_datasets_replace_the_default_tasks():
    cfg = load_config(ExperimentConfig, None, ["data.datasets=[a.hdf5]"])
    assert cfg.data.tasks == [] and to_dict(cfg)["data"]["tasks"] == []
    assert load_config(ExperimentConfig, None, []).data.tasks == ["MT10"]


def test_a_dt_built_from_the_library_has_the_runs_default_size():
    """One source for the model's size: DTConfig's defaults are the ``model`` section's."""
    from orl.model import DTConfig

    built = to_dict(DTConfig(obs_dim=3, act_dim=2))
    assert {k: built[k] for k in to_dict(ExperimentConfig().model)} == to_dict(ExperimentConfig().model)
