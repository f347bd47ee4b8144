import pytest
import torch
import torch.nn.functional as F

from orl.model.layers import OrlLinear, Route


def layer(in_f=6, out_f=5, seed=0):
    torch.manual_seed(seed)
    lin = OrlLinear(in_f, out_f)
    torch.nn.init.normal_(lin.bias)
    return lin


def test_plain_layer_is_f_linear():
    lin = layer()
    x = torch.randn(3, 4, 6)
    torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=0, atol=0)
    torch.testing.assert_close(lin(x, Route(mask=1, adapter=0)), lin(x), rtol=0, atol=0)


def test_masked_layer_equals_dense_layer_on_masked_weights():
    lin = layer()
    masks = torch.rand(3, 5, 6) > 0.5
    lin.set_masks(masks)
    x = torch.randn(4, 7, 6)
    for m in range(3):
        dense = F.linear(x, lin.weight.detach() * masks[m], lin.bias.detach())
        torch.testing.assert_close(lin(x, Route(mask=m)), dense)


def test_mixed_task_batch_matches_per_sample_reference():
    lin = layer()
    masks = torch.rand(3, 5, 6) > 0.3
    lin.set_masks(masks)
    x = torch.randn(6, 2, 6)
    task = torch.tensor([2, 0, 2, 1, 0, 2])
    out = lin(x, Route(mask=task))
    for b in range(6):
        expected = x[b] @ (lin.weight * masks[task[b]]).T + lin.bias
        torch.testing.assert_close(out[b], expected)


def test_masked_gradient_is_zero_outside_the_mask():
    lin = layer()
    masks = torch.rand(2, 5, 6) > 0.5
    lin.set_masks(masks)
    lin(torch.randn(3, 6), Route(mask=1)).sum().backward()
    assert torch.all(lin.weight.grad[~masks[1]] == 0)


def test_lora_equals_dense_layer_on_w_plus_ba():
    lin = layer()
    lin.add_adapters(num=3, rank=2, alpha=4.0)
    with torch.no_grad():
        lin.lora_b.normal_()
    x = torch.randn(4, 3, 6)
    for a in range(3):
        merged = lin.weight + (4.0 / 2) * lin.lora_b[a] @ lin.lora_a[a]
        torch.testing.assert_close(lin(x, Route(adapter=a)), F.linear(x, merged, lin.bias))
    idx = torch.tensor([1, 0, 2, 1])
    mixed = lin(x, Route(adapter=idx))
    for b in range(4):
        torch.testing.assert_close(mixed[b], F.linear(x[b], lin.merged_weight(int(idx[b])), lin.bias))


def test_new_adapter_changes_nothing():
    lin = layer()
    x = torch.randn(2, 6)
    before = lin(x)
    lin.add_adapters(2, 4)
    torch.testing.assert_close(lin(x, Route(adapter=1)), before)


def test_structured_pruning_shrinks_tensors():
    lin = layer()
    lin.set_masks(torch.ones(2, 5, 6, dtype=torch.bool))
    lin.add_adapters(1, 2)
    x = torch.randn(3, 6)
    full = lin(x)
    keep = torch.tensor([0, 2, 4])
    lin.keep_outputs(keep)
    assert lin.weight.shape == (3, 6) and lin.masks.shape == (2, 3, 6) and lin.lora_b.shape == (1, 3, 2)
    torch.testing.assert_close(lin(x), full[:, keep])
    keep_in = torch.tensor([1, 3, 5])
    expected = F.linear(x[:, keep_in], lin.weight[:, keep_in], lin.bias)
    lin.keep_inputs(keep_in)
    assert lin.weight.shape == (3, 3) and lin.lora_a.shape == (1, 2, 3)
    torch.testing.assert_close(lin(x[:, keep_in]), expected)


def test_bad_masks_and_adapters():
    lin = layer()
    with pytest.raises(ValueError, match=r"\(num_masks, 5, 6\)"):
        lin.set_masks(torch.ones(2, 6, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="rank > 0"):
        lin.add_adapters(1, 0)
