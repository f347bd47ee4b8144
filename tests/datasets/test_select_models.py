"""DT-encoder features, the NTK kernel, the Minari export and ``orl data select``."""

import json

import numpy as np
import pytest
import torch

from orl.agents import DataSpec, build_agent
from orl.cli import main
from orl.config.experiment import AgentConfig, ModelConfig
from orl.datasets.loading import load_minari
from orl.datasets.registry import DatasetExistsError, dataset_dir, list_local
from orl.datasets.sampler import SamplerConfig
from orl.datasets.select import NTKConfig, dt_features, export_selection, ntk_features, ntk_select
from orl.datasets.select.cli import METHOD_NAMES
from orl.datasets.select.ntk import kernel_agent, project, rademacher_rows, reverse_knn
from orl.datasets.store import TrajectoryStore
from orl.datasets.writer import STAGING

METHODS = ("disf", "datamask", "ntk", "random", "top-return")


def store_of(lengths, tasks=1, seed=0, sources=("pool/src-v0",)):
    rng = np.random.default_rng(seed)
    n = int(np.sum(lengths))
    episodes = len(lengths)
    return TrajectoryStore(
        observations=rng.normal(size=(n, 4)), actions=rng.uniform(-1, 1, size=(n, 2)),
        rewards=rng.uniform(0, 1, n), terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool),
        episode_starts=np.concatenate([[0], np.cumsum(lengths)]),
        episode_task=np.arange(episodes) % tasks, task_names=[f"t{i}" for i in range(tasks)],
        episode_success=np.arange(episodes) % 3 == 0, sources=list(sources),
    )


def tiny_agent(name, store):
    spec = DataSpec(obs_dim=4, act_dim=2, task_names=store.task_names, rtg_scale=1.0,
                    target_returns=[1.0] * store.num_tasks)
    torch.manual_seed(0)
    return build_agent(AgentConfig(name=name), ModelConfig(embed_dim=8, n_layer=2, n_head=2,
                                                           dropout=0.0, max_timestep=40),
                       SamplerConfig(context_len=5), spec, np.zeros((store.num_tasks, 4)),
                       np.ones((store.num_tasks, 4))).eval()


# ------------------------------------------------------------------------------- features
def test_dt_features_are_mean_hidden_states_of_each_episode():
    store = store_of([5, 3, 5, 4], tasks=2)  # every episode fits one 5-step window
    agent = tiny_agent("mtdt", store)
    features = dt_features(agent, store)
    from orl.datasets.sampler import SegmentSampler

    sampler = SegmentSampler(store, SamplerConfig(context_len=5))
    for e, (first, length) in enumerate(zip(store.episode_starts[:-1], store.episode_lengths)):
        batch = sampler.segments(np.array([first]))
        with torch.no_grad():
            hidden = agent.model.encode(batch.states, batch.actions, batch.returns_to_go,
                                        batch.timesteps, batch.mask, task=batch.task)
        expected = hidden[0, batch.mask[0]].mean(0)
        assert batch.mask[0].sum() == length
        np.testing.assert_allclose(features[e], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_dt_features_need_known_tasks():
    store = store_of([5, 5], tasks=2)
    agent = tiny_agent("mtdt", store_of([5], tasks=1))
    with pytest.raises(ValueError, match="no task id"):
        dt_features(agent, store)


# -------------------------------------------------------------------------------------- NTK
def test_rademacher_rows_are_consistent_and_signed():
    whole = rademacher_rows(0, 9000, 16, seed=3)
    torch.testing.assert_close(rademacher_rows(4000, 5000, 16, seed=3), whole[4000:5000])
    assert set(torch.unique(whole * 4).tolist()) == {-1.0, 1.0}
    assert not torch.equal(rademacher_rows(0, 10, 16, seed=4), whole[:10])


@pytest.mark.parametrize("params", ["adapter", "last-block"])
def test_kernel_equals_slow_projected_gradient_products(params):
    store = store_of([12, 7, 9])
    agent = tiny_agent("dt", store)
    cfg = NTKConfig(params=params, rank=2, dim=32, max_segments=3)
    fast = ntk_features(agent, store, cfg, seed=5)
    kernel = fast @ fast.T

    # slow: one backward per segment, accumulated in .grad; the dense projection matrix
    from orl.datasets.select.features import SegmentEncoder

    model_agent, chosen, route = kernel_agent(agent, params, rank=2, seed=5)
    encoder = SegmentEncoder(model_agent, store, max_segments=3)
    gradients = []
    for e in range(store.num_episodes):
        for p in chosen:
            p.grad = None
        for s in np.flatnonzero(encoder.owner == e):
            batch = encoder.batch(np.array([s]))
            out = model_agent.model.predict(encoder.hidden(batch, route))
            (out * batch.mask[..., None]).sum().backward()
        gradients.append(torch.cat([p.grad.reshape(-1) for p in chosen]))
    gradients = torch.stack(gradients)
    assert gradients.abs().sum() > 0
    dense = rademacher_rows(0, gradients.shape[1], 32, seed=5)
    slow = (gradients @ dense) @ (gradients @ dense).T
    torch.testing.assert_close(kernel, slow, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(project(gradients, 32, 5), gradients @ dense, rtol=1e-4, atol=1e-6)


def test_adapters_leave_the_callers_model_alone():
    store = store_of([6])
    agent = tiny_agent("dt", store)
    kernel_agent(agent, "adapter", rank=2)
    assert all(m.lora_a is None for m in agent.model.modules() if hasattr(m, "lora_a"))


def test_reverse_knn_keeps_the_targets_neighbours():
    pool = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.1, 0.9]])
    target = np.array([[1.0, 0.05], [0.05, 1.0]])
    assert reverse_knn(pool, target, 2).tolist() == [0, 2]
    assert reverse_knn(pool, target, 4).tolist() == [0, 1, 2, 4]


def test_ntk_select_returns_budget_from_the_pool():
    pool, target = store_of([8] * 12, seed=1), store_of([8] * 2, seed=2)
    agent = tiny_agent("dt", target)
    chosen = ntk_select(agent, pool, target, 3, NTKConfig(rank=2, dim=16, max_segments=2))
    assert len(set(chosen.tolist())) == 3 and chosen.max() < 12


# ----------------------------------------------------------------------------------- export
def test_export_loads_back_as_the_selected_multi_task_store(tmp_path):
    store = store_of([5, 6, 7, 8, 4, 3], tasks=3)
    chosen = np.array([1, 2, 5])
    path = export_selection(store, chosen, "selected/test-v0", {"method": "random", "seed": 0}, tmp_path)
    assert path == dataset_dir("selected/test-v0", tmp_path)
    loaded, expected = load_minari("selected/test-v0", tmp_path), store.select_episodes(chosen)
    for name in ("observations", "actions", "rewards", "episode_starts", "episode_success",
                 "terminals", "timeouts"):
        np.testing.assert_allclose(getattr(loaded, name), getattr(expected, name), rtol=1e-6)
    names = [loaded.task_names[t] for t in loaded.episode_task]
    assert names == [store.task_names[t] for t in expected.episode_task] == ["t1", "t2", "t2"]
    metadata = json.loads((path / "data" / "metadata.json").read_text())
    assert "pool/src-v0" in str(metadata["orl_selection"]) and "random" in str(metadata["orl_selection"])
    with pytest.raises(DatasetExistsError, match="already exists"):
        export_selection(store, chosen, "selected/test-v0", {}, tmp_path)


def test_export_lists_only_tasks_with_episodes(tmp_path):
    store = store_of([5, 6, 7, 8, 4, 3], tasks=3)  # episode e has task e % 3
    export_selection(store, np.array([2, 5, 1]), "selected/two-v0", {}, tmp_path)
    loaded = load_minari("selected/two-v0", tmp_path)
    assert loaded.task_names == ["t1", "t2"] and loaded.episode_task.tolist() == [1, 1, 0]


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    import minari

    def broken(**kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_selection(store_of([5, 5]), np.array([0]), "selected/broken-v0", {}, tmp_path)
    staging = tmp_path / STAGING
    assert list_local(tmp_path) == [] and (not staging.exists() or not any(staging.iterdir()))


# -------------------------------------------------------------------------------------- CLI
@pytest.fixture
def pool_ids(tmp_path):
    """Two single-task Minari datasets made by the exporter itself."""
    ids = []
    for t in range(2):
        store = store_of([6, 9, 7, 8, 6, 10, 5, 7], seed=t, sources=[f"src-{t}"])
        store.task_names = [f"task{t}"]
        ids.append(f"pool/task{t}-v0")
        export_selection(store, np.arange(8), ids[-1], {"method": "all"}, tmp_path)
    return tmp_path, ids


@pytest.mark.parametrize("method", ["disf", "datamask", "random", "top-return"])
def test_cli_select_writes_a_dataset_and_summary(pool_ids, method, capsys):
    root, ids = pool_ids
    summary = root / "summary.json"
    code = main(["data", "select", *ids, "--method", method, "--budget", "0.25", "-o",
                 f"sel/{method}-v0", "--steps", "5", "--block-size", "8", "--root", str(root),
                 "--json", str(summary)])
    assert code == 0
    result = json.loads(summary.read_text())
    assert result["selected"] == 4 and result["pool_episodes"] == 16
    assert {"seconds", "dominance_pool", "dominance_selected", "return_mean_selected"} <= set(result)
    loaded = load_minari(f"sel/{method}-v0", root)
    assert loaded.num_episodes == 4 and set(loaded.task_names) <= {"task0", "task1"}
    assert "mean return" in capsys.readouterr().out


@pytest.mark.parametrize("budget, message", [("1.5", "(0, 1]"), ("40", "larger than the pool"),
                                             ("0", ">= 1")])
def test_cli_bad_budget(pool_ids, budget, message, capsys):
    root, ids = pool_ids
    assert main(["data", "select", *ids, "--budget", budget, "-o", "sel/x-v0",
                 "--root", str(root)]) == 2
    assert message in capsys.readouterr().err
    assert "sel/x-v0" not in list_local(root)


def test_cli_refuses_existing_output_and_ntk_without_model(pool_ids, capsys):
    root, ids = pool_ids
    assert main(["data", "select", *ids, "-o", ids[0], "--root", str(root)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "select", ids[0], "--method", "ntk", "--target", ids[1], "-o", "sel/n-v0",
                 "--root", str(root)]) == 2
    assert "needs a DT agent" in capsys.readouterr().err


def test_cli_methods_are_the_library_methods():
    from orl.datasets.select import METHODS as LIBRARY

    assert METHOD_NAMES == LIBRARY == METHODS
