"""models/dropout.py: nn.Dropout's behaviour with a mask drawn four elements per random word on the CPU."""
import pytest
import torch

from models import dropout as dropout_module
from models.dropout import DRAW_BITS, Dropout, cpu_dropout_mask


def quantized(p: float) -> float:
    return round(p * 2 ** DRAW_BITS) / 2 ** DRAW_BITS


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drop_rate_in_every_lane_of_a_word(p):
    torch.manual_seed(0)
    keep = cpu_dropout_mask(torch.Size([1 << 22]), p)
    dropped = (~keep).double()
    # 4M draws: the standard error of a rate is at most 2.5e-4 (1M per lane: 5e-4); 5 standard errors.
    assert abs(dropped.mean().item() - quantized(p)) < 1.25e-3
    lanes = dropped.view(-1, 4)  # the four draws cut from one 64-bit word
    for lane in range(4):
        assert abs(lanes[:, lane].mean().item() - quantized(p)) < 2.5e-3, lane
    # draws from one word are independent: both of a pair dropped at rate p^2
    both = (lanes[:, 0] * lanes[:, 3]).mean().item()
    assert abs(both - quantized(p) ** 2) < 2.5e-3


def test_forward_scales_kept_elements_and_backward_uses_the_same_mask():
    torch.manual_seed(1)
    x = (torch.rand(64, 6, 40) + 0.5).requires_grad_()
    layer = Dropout(0.25).train()
    y = layer(x)
    kept = y != 0
    assert 0.2 < 1 - kept.double().mean().item() < 0.3
    torch.testing.assert_close(y[kept], x.detach()[kept] / 0.75, rtol=1e-6, atol=0)
    upstream = torch.randn_like(x)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, upstream * kept / 0.75, rtol=1e-6, atol=0)


def test_seeded_masks_repeat_and_successive_calls_differ():
    layer = Dropout(0.5).train()
    x = torch.ones(1000)
    torch.manual_seed(3)
    first, second = layer(x), layer(x)
    torch.manual_seed(3)
    assert torch.equal(layer(x), first)
    assert not torch.equal(first, second)


def test_dtype_and_shape_are_kept():
    y = Dropout(0.1).train()(torch.ones(3, 5, 7, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y.shape == (3, 5, 7)
    assert set(y.unique().tolist()) <= {0.0, torch.tensor(1 / 0.9, dtype=torch.bfloat16).item()}


@pytest.mark.parametrize("case", ["eval", "p=0", "p=1", "meta device"])
def test_other_cases_are_nn_dropout(case, monkeypatch):
    monkeypatch.setattr(dropout_module, "cpu_dropout_mask", lambda *args: pytest.fail("CPU mask drawn"))
    x = torch.rand(4, 8) + 0.5
    if case == "eval":
        assert torch.equal(Dropout(0.5).eval()(x), x)
    elif case == "p=0":
        assert torch.equal(Dropout(0.0).train()(x), x)
    elif case == "p=1":
        assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    else:
        assert Dropout(0.5).train()(x.to("meta")).device.type == "meta"


def test_attention_takes_the_explicit_path_only_to_drop_weights():
    from models.dropout import explicit_attention

    attention = torch.nn.MultiheadAttention(8, 2, dropout=0.1)
    assert explicit_attention(attention.train())
    assert not explicit_attention(attention.eval())
    assert not explicit_attention(torch.nn.MultiheadAttention(8, 2, dropout=0.0).train())
