"""Study files: an experiment grid as data (``studies/<name>.yaml``).

A study names a base ``train-agent`` config, config overrides shared by every run, named
variants (override sets), optional extra axes (named values, each an override set), seeds, the
evaluation protocol and the pairs to compare. Every (variant, axis values, seed) is one run with
a key such as ``harmodt-F+sub-s3``. A run's resolved config is validated, and hashed, before
anything is launched.

Inside a study a mapping's keys that hold a dot (``train.steps``) are config overrides; keys
without one are the study's own options (``axes``, ``evals``).

``extends: <study file>`` starts from another study (see :func:`read_study_mapping`): the same
protocol in one place, e.g. a shuffled task order run at the budget of the original.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orl.config import ConfigError, from_dict, to_dict
from orl.config.loader import merge, read_yaml_mapping

# Keys of a run's config that say where and how it is logged, not what it computes.
UNHASHED = ("run.name", "run.out_dir", "run.logger", "run.wandb_project", "run.wandb_group")
DEFAULT_EPISODES = 50  # Meta-World: one episode per goal variation
SCORES = ("success", "return", "normalized_score")  # per-task scores a record keeps


class StudyError(ValueError):
    """A study file, run key or results store that cannot be used; the message says which."""


@dataclass
class ExtraEval:
    """A further evaluation of a run's final checkpoint (``evals`` of the study)."""

    variants: list[str] = field(default_factory=list)  # empty: every variant
    task_agnostic: bool = False  # HarmoDT: act without task ids
    prune: dict | None = None  # orl prune options (PruneConfig fields), e.g. {ratio: 0.5}
    calibration: dict | None = None  # LIAR calibration options (CalibrationConfig fields)
    finetune_steps: int = 0  # after pruning: train this many steps more (retraining baseline)
    finetune_lr: float = 3e-4

    def __post_init__(self) -> None:
        if self.finetune_steps and self.prune is None:
            raise ValueError("finetune_steps fine-tunes a pruned model: set prune too")


@dataclass
class Protocol:
    """How runs are evaluated: ``episodes`` per task on the final checkpoint (and at every
    ``train.eval_every`` steps, when set: those are the run's learning-curve points)."""

    episodes: int = DEFAULT_EPISODES
    num_envs: int = 25  # envs per task stepping together (at most ``episodes``)
    score: str = "success"  # what the report aggregates: success | return | normalized_score

    def __post_init__(self) -> None:
        if self.episodes <= 0 or self.num_envs <= 0:
            raise ValueError("eval.episodes and eval.num_envs must be positive")
        if self.score not in SCORES:
            raise ValueError(f"eval.score must be one of {', '.join(SCORES)}, got {self.score!r}")


@dataclass
class Budget:
    """What one run costs, as measured (``orl study status`` multiplies it out)."""

    minutes_per_run: float | None = None  # on one core, before any run is recorded
    minutes: dict = field(default_factory=dict)  # variant -> minutes, where it differs
    threads_per_run: int = 1
    note: str = ""


@dataclass
class Prepare:
    """A command that makes something the runs need (e.g. a selected dataset), run once before
    any run unless ``creates`` (a path relative to the working directory, or a dataset id)
    exists."""

    command: list[str] = field(default_factory=list)
    creates: str = ""


@dataclass
class Paper:
    """Published numbers to print beside the study's: ``values`` maps a condition to
    ``{metric: value}``, a metric being an aggregate of the final score (``mean``, ``median``,
    ``IQM``, ``optimality gap``) or a run metric (continual: ``performance``, ``forgetting``...),
    in the study's units (success as a fraction)."""

    note: str = ""  # where the numbers come from and how they differ from the study's protocol
    values: dict = field(default_factory=dict)


# What a study says about its own results: never taken from the study it extends.
NOT_INHERITED = ("description", "page", "paper", "pairs")
# Mappings that an extending study merges into its parent's (its keys win).
MERGED = ("overrides", "eval", "budget")


def read_study_mapping(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The study file's mapping with ``extends`` resolved: the parent's options, except
    ``NOT_INHERITED``, under the file's own; ``overrides``, ``eval`` and ``budget`` merged key by
    key; ``variants`` given as a list of names keeps those of the parent's variants (and their
    ``budget.minutes``). ``base`` stays relative to the file that names it."""
    path = path.resolve()
    if path in seen:
        cycle = " -> ".join(p.name for p in (*seen, path))
        raise StudyError(f"study files extend each other in a cycle: {cycle}")
    try:
        data = read_yaml_mapping(path, "Study file")
    except ConfigError as err:
        raise StudyError(f"study {path.stem}: {err}") from err
    if isinstance(data.get("base"), str):
        data["base"] = str((path.parent / data["base"]).resolve())
    parent_name = data.get("extends")
    if parent_name is None:
        return data
    parent = read_study_mapping(path.parent / str(parent_name), (*seen, path))
    if isinstance(data.get("variants"), list):
        names = [str(v) for v in data["variants"]]
        known = {str(k): v for k, v in (parent.get("variants") or {}).items()}
        missing = [v for v in names if v not in known]
        if missing:
            raise StudyError(f"study {path.stem}: variants {missing} are not variants of "
                             f"{parent_name} ({', '.join(known)})")
        data["variants"] = {v: known[v] for v in names}
        minutes = (parent.get("budget") or {}).get("minutes")
        if isinstance(minutes, dict):
            parent["budget"] = {**parent["budget"],
                                "minutes": {k: v for k, v in minutes.items() if str(k) in names}}
    out = {k: v for k, v in parent.items() if k not in NOT_INHERITED}
    for key, value in data.items():
        out[key] = merge(out.get(key) or {}, value) if key in MERGED and isinstance(value, dict) else value
    return out


@dataclass
class StudyFile:
    """The options of a study file (variants, axes, overrides: see the module doc)."""

    seeds: list[int] = field(default_factory=list)
    variants: dict = field(default_factory=dict)
    base: str | None = None  # train-agent config YAML, relative to the study file
    overrides: dict = field(default_factory=dict)
    axes: dict = field(default_factory=dict)
    eval: Protocol = field(default_factory=Protocol)
    evals: dict = field(default_factory=dict)  # name -> ExtraEval
    pairs: list[list[str]] = field(default_factory=list)
    references: str = ""  # continual: the variant whose runs are each seed's single-task references
    budget: Budget = field(default_factory=Budget)
    prepare: list[Prepare] = field(default_factory=list)
    description: str = ""
    paper: Paper = field(default_factory=Paper)
    page: str = ""  # the results page --write-docs fills (docs/results/<page>.md); default: the study's name
    extends: str = ""  # the study file this one starts from, relative to it


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: its key, resolved config (plain dict) and its hash."""

    key: str
    variant: str
    axes: dict[str, str]
    seed: int
    config: dict[str, Any]
    config_hash: str
    evals: tuple[str, ...]  # names of the extra evaluations of this run

    @property
    def label(self) -> str:
        """The condition this run is a seed of (variant and axis values)."""
        return "+".join([self.variant, *self.axes.values()])

    def dir_name(self) -> str:
        """Run directory name: the key and the config hash, so a changed config gets a new dir."""
        return f"{self.key}-{self.config_hash[:8]}"


def expected_minutes(study: Study, records: dict[str, dict],
                     inherited: dict[str, list[float]] | None = None) -> dict[str, float | None]:
    """Expected minutes of every run of ``study`` (by key): the mean measured time of its
    variant's recorded runs (``records``: key -> record), else of the same variant's runs in the
    study it extends (``inherited``: variant -> minutes of each run), else the budget's minutes
    for its variant, else ``budget.minutes_per_run``, else the mean of every recorded run (None
    when nothing is known)."""
    measured: dict[str, list[float]] = {}
    for run in study.runs:
        wall = records.get(run.key, {}).get("wall_s")
        if wall:
            measured.setdefault(run.variant, []).append(wall / 60)
    for variant, times in (inherited or {}).items():
        if times:
            measured.setdefault(variant, times)
    everything = [m for times in measured.values() for m in times]
    budget = study.file.budget
    fallback = budget.minutes_per_run
    if fallback is None and everything:
        fallback = sum(everything) / len(everything)
    return {run.key: (sum(measured[run.variant]) / len(measured[run.variant])
                      if run.variant in measured else budget.minutes.get(run.variant, fallback))
            for run in study.runs}


@dataclass
class Study:
    """A loaded, validated study."""

    name: str
    path: Path
    file: StudyFile
    runs: list[RunSpec]
    extra_evals: dict[str, ExtraEval]

    @property
    def parent(self) -> Path | None:
        """The study file this study extends, if any."""
        return (self.path.parent / self.file.extends).resolve() if self.file.extends else None

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(run.label for run in self.runs))

    def conditions(self) -> list[str]:
        """Every condition the report has a row for: labels, and ``label[eval]`` of extra evals."""
        out = [r.label for r in self.runs] + [f"{r.label}[{e}]" for r in self.runs for e in r.evals]
        return list(dict.fromkeys(out))

    def compared_pairs(self) -> list[tuple[str, str]]:
        """The study's ``pairs`` as condition pairs. A pair of variant names (``[eval]`` allowed)
        stands for the pair at each combination of axis values."""
        conditions = set(self.conditions())
        suffixes = list(dict.fromkeys("".join(f"+{v}" for v in r.axes.values()) for r in self.runs))
        out = []
        for pair in self.file.pairs:
            if len(pair) == 2 and set(pair) <= conditions:
                out.append((pair[0], pair[1]))
                continue
            expanded = [tuple(_with_suffix(n, suffix) for n in pair) for suffix in suffixes]
            expanded = [p for p in expanded if len(p) == 2 and set(p) <= conditions]
            if not expanded:
                raise StudyError(f"study {self.name}: pair {pair} must name two variants or two of "
                                 f"{sorted(conditions)}")
            out += expanded
        return out

    def select(self, only: list[str] | None) -> list[RunSpec]:
        """The runs named by ``only`` (run keys, variants, conditions or axis values); all when
        empty."""
        if not only:
            return list(self.runs)

        def names(run: RunSpec) -> set[str]:
            return {run.key, run.variant, run.label, *run.axes.values()}

        chosen = [r for r in self.runs if names(r) & set(only)]
        unknown = [o for o in only if not any(o in names(r) for r in self.runs)]
        if unknown:
            raise StudyError(f"{self.name}: no run, variant, condition or axis value {unknown}; "
                             "valid variants: "
                             f"{', '.join(dict.fromkeys(r.variant for r in self.runs))}; keys look "
                             f"like {self.runs[0].key}")
        return chosen


def _with_suffix(name: str, suffix: str) -> str:
    """``variant[eval]`` + ``+value`` -> ``variant+value[eval]``."""
    base, bracket, rest = name.partition("[")
    return f"{base}{suffix}{bracket}{rest}"


def _split(mapping: Any, where: str, options: tuple[str, ...]) -> tuple[dict, dict]:
    """(config overrides as a nested dict, study options) of a study mapping."""
    if mapping is None:
        return {}, {}
    if not isinstance(mapping, dict):
        raise StudyError(f"{where}: expected a mapping of overrides (train.steps: 1000), got {mapping!r}")
    nested: dict[str, Any] = {}
    own = {}
    for key, value in mapping.items():
        key = str(key)
        if "." not in key:
            if key not in options:
                raise StudyError(f"{where}: unknown key {key!r}; config overrides are dotted "
                                 f"(section.key){'; options here: ' + ', '.join(options) if options else ''}")
            own[key] = value
            continue
        node = nested
        *sections, leaf = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested, own


def config_hash(config: dict[str, Any], evals: list[dict[str, Any]]) -> str:
    """sha256 of what the study file asks of a run: the config values it sets (base config,
    overrides, variant, axes, protocol, seed; not where or how the run logs) and its extra
    evaluations. Options orl adds later, with their defaults, leave it unchanged: the record
    keeps the full resolved config and the commit for that."""
    plain = json.loads(json.dumps(config))
    for dotted in UNHASHED:
        section, key = dotted.split(".")
        plain.get(section, {}).pop(key, None)
    text = json.dumps({"config": plain, "evals": evals}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def load_study(path: str | Path) -> Study:
    """Read and validate ``studies/<name>.yaml``: every run's config is built (so a bad key fails
    here, naming the run and the key) before anything runs."""
    from orl.config.experiment import ExperimentConfig

    path = Path(path)
    name = path.stem
    try:
        spec = from_dict(StudyFile, read_study_mapping(path))
    except ConfigError as err:
        raise StudyError(f"study {name}: {err}") from err
    if not spec.seeds:
        raise StudyError(f"study {name}: seeds is empty; list at least one (seeds: [0, 1, 2, 3, 4]).")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise StudyError(f"study {name}: seeds {spec.seeds} repeat a seed.")
    if not spec.variants:
        raise StudyError(f"study {name}: no variants; name at least one (variants: {{mtdt: "
                         "{agent.name: mtdt}}).")
    unknown = set(map(str, spec.budget.minutes)) - set(map(str, spec.variants))
    if unknown:
        raise StudyError(f"study {name}: budget.minutes names unknown variants {sorted(unknown)}")
    base = read_yaml_mapping((path.parent / spec.base).resolve(), "Base config") if spec.base else {}
    common, _ = _split(spec.overrides, f"study {name}: overrides", ())
    evals = {}
    for eval_name, options in spec.evals.items():
        try:
            evals[str(eval_name)] = from_dict(ExtraEval, options or {}, f"evals.{eval_name}")
        except ConfigError as err:
            raise StudyError(f"study {name}: {err}") from err
        unknown = set(evals[str(eval_name)].variants) - set(map(str, spec.variants))
        if unknown:
            raise StudyError(f"study {name}: evals.{eval_name} names unknown variants {sorted(unknown)}")
    protocol = {"eval": {"episodes": spec.eval.episodes,
                         "num_envs": min(spec.eval.num_envs, spec.eval.episodes)},
                "run": {"wandb_group": name}}
    runs = []
    for variant, options in spec.variants.items():
        variant = str(variant)
        overrides, own = _split(options, f"study {name}: variants.{variant}", ("axes",))
        axes = {**spec.axes, **(own.get("axes") or {})}
        for axis, values in axes.items():
            if not isinstance(values, dict) or not values:
                raise StudyError(f"study {name}: axis {axis!r} must map value names to overrides")
        value_sets = [[(axis, str(v), values[v]) for v in values] for axis, values in axes.items()]
        mine = [e for e, opt in evals.items() if not opt.variants or variant in opt.variants]
        for combo in itertools.product(*value_sets):
            data = merge(merge(base, common), overrides)
            for axis, value, axis_overrides in combo:
                data = merge(data, _split(axis_overrides, f"study {name}: axes.{axis}.{value}", ())[0])
            for seed in spec.seeds:
                key = "+".join([variant, *(v for _, v, _ in combo)]) + f"-s{seed}"
                data_seed = merge(merge(data, protocol), {"run": {"seed": seed}})
                try:
                    cfg = from_dict(ExperimentConfig, data_seed)
                except ConfigError as err:
                    raise StudyError(f"study {name}, run {key}: {err}") from err
                config = to_dict(cfg)
                runs.append(RunSpec(
                    key=key, variant=variant, axes={a: v for a, v, _ in combo}, seed=seed,
                    config=config, evals=tuple(mine),
                    config_hash=config_hash(data_seed, [{e: dataclasses.asdict(evals[e])} for e in mine]),
                ))
    if spec.references and spec.references not in spec.variants:
        raise StudyError(f"study {name}: references names no variant ({spec.references!r})")
    study = Study(name=name, path=path, file=spec, runs=runs, extra_evals=evals)
    study.compared_pairs()  # names checked now
    unknown = set(map(str, spec.paper.values)) - set(study.conditions())
    if unknown:
        raise StudyError(f"study {name}: paper.values names unknown conditions {sorted(unknown)}; "
                         f"the conditions are {study.conditions()}")
    for label, metrics in spec.paper.values.items():
        if not isinstance(metrics, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
            raise StudyError(f"study {name}: paper.values.{label} must map metric names to "
                             f"numbers (e.g. {{mean: 0.604}}), got {metrics!r}")
    return study
