import pytest
import torch

from orl.model.dt import DecisionTransformer, DTConfig, attention_mask
from orl.model.layers import Route


def tiny(**kw):
    torch.manual_seed(0)
    cfg = DTConfig(obs_dim=5, act_dim=3, context_len=6, embed_dim=16, n_layer=2, n_head=2,
                   dropout=0.0, max_timestep=50, **kw)
    return DecisionTransformer(cfg).eval()


def inputs(b=2, k=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        states=torch.randn(b, k, 5, generator=g),
        actions=torch.rand(b, k, 3, generator=g) * 2 - 1,
        returns_to_go=torch.randn(b, k, generator=g),
        timesteps=torch.arange(k).repeat(b, 1),
    )


@pytest.mark.parametrize("return_conditioned", [True, False])
def test_shapes(return_conditioned):
    model = tiny(return_conditioned=return_conditioned)
    out = model(**inputs())
    assert out.shape == (2, 6, 3) and out.abs().max() <= 1


@pytest.mark.parametrize("field", ["states", "actions", "returns_to_go"])
def test_causality(field):
    """Changing step t never changes predictions before t (nor a_t's own prediction from a_t)."""
    model = tiny()
    x = inputs()
    base = model(**x)
    t = 3
    changed = {k: v.clone() for k, v in x.items()}
    changed[field][:, t] += 5.0
    out = model(**changed)
    torch.testing.assert_close(out[:, :t], base[:, :t])
    if field == "actions":  # a_t is predicted before a_t is seen
        torch.testing.assert_close(out[:, t], base[:, t])
    else:
        assert not torch.allclose(out[:, t], base[:, t])


def test_left_padding_is_ignored():
    """Real steps give the same predictions whatever the padding holds."""
    model = tiny()
    x = inputs()
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, :2] = False
    out = model(**x, mask=mask)
    garbage = {k: v.clone() for k, v in x.items()}
    garbage["states"][:, :2] = 100.0
    garbage["returns_to_go"][:, :2] = -7.0
    torch.testing.assert_close(model(**garbage, mask=mask)[:, 2:], out[:, 2:])
    short = {k: v[:, 2:] for k, v in x.items()}
    torch.testing.assert_close(model(**short)[:, :], out[:, 2:], atol=1e-5, rtol=1e-5)


def test_attention_mask_reference():
    valid = torch.tensor([[False, True, True]])
    expected = torch.tensor([[True, False, False], [False, True, False], [False, True, True]])
    assert torch.equal(attention_mask(valid)[0, 0], expected)


def test_task_embedding_prompt_and_heads():
    model = tiny(num_tasks=3, prompt_len=2, num_action_heads=2)
    x = inputs()
    prompt = {k: v[:, :2] for k, v in inputs(seed=2).items()}
    prompt["mask"] = torch.tensor([[False, True], [True, True]])
    task = torch.tensor([0, 2])
    out0 = model(**x, task=task, prompt=prompt, head=0)
    out1 = model(**x, task=task, prompt=prompt, head=1)
    mixed = model(**x, task=task, prompt=prompt, head=torch.tensor([1, 0]))
    torch.testing.assert_close(mixed[0], out1[0])
    torch.testing.assert_close(mixed[1], out0[1])
    assert not torch.allclose(model(**x, task=torch.tensor([1, 2]), prompt=prompt)[0], out0[0])
    with pytest.raises(ValueError, match="task"):
        model(**x, prompt=prompt)


@pytest.mark.parametrize("return_conditioned", [True, False])
@pytest.mark.parametrize("extras", ["plain", "padding", "task_prompt_route"])
def test_last_only_equals_the_last_step_of_the_full_forward(return_conditioned, extras):
    """Inference computes only the last state token: the same action as the full forward."""
    conditioned = {"num_tasks": 3, "prompt_len": 2} if extras == "task_prompt_route" else {}
    model = tiny(return_conditioned=return_conditioned, **conditioned)
    x = inputs()
    if extras == "padding":
        x["mask"] = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    if extras == "task_prompt_route":
        x["prompt"] = {k: v[:, :2] for k, v in inputs(seed=2).items()}
        x["prompt"]["mask"] = torch.tensor([[False, True], [True, True]])
        x["task"] = torch.tensor([0, 2])
        for _, lin in model.transformer.linears():
            g = torch.Generator().manual_seed(3)
            lin.set_masks(torch.rand(2, *lin.weight.shape, generator=g) < 0.7)
        x["route"] = Route(mask=torch.tensor([1, 0]))
    last = model(**x, last_only=True)
    assert last.shape == (2, 1, 3)
    torch.testing.assert_close(last, model(**x)[:, -1:], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("extras", ["plain", "task_prompt_route"])
def test_encode_cached_equals_last_only(extras):
    """Token features computed a few tokens at a time, as inference caches them, then
    ``encode_cached`` over the window: the same features as ``encode(..., last_only=True)``."""
    model = tiny(**({"num_tasks": 3, "prompt_len": 2} if extras != "plain" else {}))
    x, task, route, valid = inputs(), None, None, None
    tokens = model.embed(x["states"], x["actions"], x["returns_to_go"], x["timesteps"])[:, :-1]
    if extras != "plain":
        prompt = {k: v[:, :2] for k, v in inputs(seed=2).items()}
        prompt["mask"] = torch.tensor([[False, True], [True, True]])
        task, x["task"], x["prompt"] = torch.tensor([0, 2]), torch.tensor([0, 2]), prompt
        for _, lin in model.transformer.linears():
            lin.set_masks(torch.rand(2, *lin.weight.shape, generator=torch.Generator().manual_seed(3)) < 0.7)
        route = x["route"] = Route(mask=torch.tensor([1, 0]))
        p = model.prompt_embed(prompt["states"], prompt["actions"], prompt["returns_to_go"],
                               prompt["timesteps"])
        tokens = torch.cat([p, tokens], dim=1)
        valid = torch.cat([prompt["mask"].repeat_interleave(3, dim=1),
                           torch.ones(2, tokens.shape[1] - p.shape[1], dtype=torch.bool)], dim=1)
    pieces = [model.token_features(chunk, task, route) for chunk in tokens.split(3, dim=1)]
    cached = model.encode_cached(torch.cat([f for f, _ in pieces], 1),
                                 torch.cat([q for _, q in pieces], 1), valid, route)
    torch.testing.assert_close(cached, model.encode(**x, last_only=True), atol=1e-6, rtol=1e-5)
    with pytest.raises(RuntimeError, match="eval mode"):
        model.train().encode_cached(*pieces[0])


def test_route_reaches_every_block_linear():
    model = tiny()
    linears = model.transformer.linears()
    assert len(linears) == 2 * 4
    for _, lin in linears:
        lin.set_masks(torch.zeros(1, *lin.weight.shape, dtype=torch.bool))
    x = inputs()
    assert not torch.allclose(model(**x, route=Route(mask=0)), model(**x))


def test_bad_config():
    with pytest.raises(ValueError, match="divisible"):
        DTConfig(obs_dim=3, act_dim=2, embed_dim=10, n_head=3)
    with pytest.raises(ValueError, match="model.context_len"):
        DTConfig(obs_dim=3, act_dim=2, context_len=0)
