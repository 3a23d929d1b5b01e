"""The rotations a Givens layer keeps while its parameters stand still: reused while nothing changes (counted),
rebuilt after every change, never used where a gradient is wanted, and equal to the rotation built at each call."""

import copy
import warnings

import pytest
import torch
from peft import get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
from transformers.pytorch_utils import Conv1D

import goft
from goft import GivensConfig
from goft.rotation.backend import use_backend
from goft.rotation.prepared import prepare_rotation
from goft.tuners.givens.layer import GivensLayer
from goft.tuners.givens.rotation_cache import drop_rotation_caches
from tests.support.models import Block, tiny_model

MODES = {
    "strict": dict(),
    "quasi": dict(strict=False, quasi=True),
    "scaled": dict(strict=False, scaling=True),
}
WIDTHS = [10, 33, 50, 96]  # no full block; a lone last coordinate; a tail of 2; full blocks only


def adapted(kind: str, d: int, mode: str, n: int = 24):
    torch.manual_seed(0)
    layer = nn.Linear(d, n) if kind == "linear" else Conv1D(n, d)
    if kind == "conv1d":
        nn.init.normal_(layer.weight, std=0.2)
    model = get_peft_model(Block(layer), GivensConfig(target_modules=["proj"], init_weights=False, **MODES[mode]))
    return model.eval()


def layer_of(model) -> GivensLayer:
    return next(m for m in model.modules() if isinstance(m, GivensLayer))


def rebuilt_each_call(model, x):
    """The output with the rotation built from the parameters at this call (the training path, no cache)."""
    with torch.enable_grad():
        return model(x).detach()


def assert_close(got, want, tolerance=1e-6):
    error = ((got - want).abs().max() / want.abs().max()).item()
    assert error <= tolerance, error


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("d", WIDTHS)
def test_kept_rotation_equals_the_rotation_built_at_each_call(kind, mode, d):
    model = adapted(kind, d, mode)
    layer = layer_of(model)
    for tokens in (1, 7):  # one token (decoding) and several (a prompt)
        x = torch.randn(2, tokens, d) if tokens > 1 else torch.randn(1, 1, d)
        with torch.no_grad():
            kept = model(x)
        assert layer._rotation_cache.builds >= 1
        assert_close(kept, rebuilt_each_call(model, x))


def test_reused_while_nothing_changes():
    model = adapted("linear", 50, "strict")
    cache = layer_of(model)._rotation_cache
    x = torch.randn(3, 50)
    with torch.no_grad():
        outputs = [model(x) for _ in range(4)]
    assert (cache.builds, cache.reuses) == (1, 3)
    assert all(torch.equal(o, outputs[0]) for o in outputs)
    with torch.inference_mode():  # also under inference mode, and the rotation kept there works outside it
        model(x)
    with torch.no_grad():
        model(x)
    assert cache.builds == 1


def test_inputs_of_another_dtype_get_their_own_rotation():
    model = adapted("linear", 50, "strict")
    cache = layer_of(model)._rotation_cache
    with torch.no_grad():
        model(torch.randn(3, 50))
        model.to(torch.float64)
        out = model(torch.randn(3, 50, dtype=torch.float64))
    assert out.dtype == torch.float64 and cache.builds == 2


def change(model, event: str):
    """Apply one of the events after which the kept rotation must not be used."""
    layer = layer_of(model)
    angles = layer.givens_angles["default"]
    if event == "in-place change":
        with torch.no_grad():
            angles.add_(0.3)
    elif event.endswith("optimizer step"):
        options = {"fused optimizer step": {"fused": True}, "foreach optimizer step": {"foreach": True}}.get(event, {})
        optimizer = torch.optim.AdamW([angles], lr=0.5, **options)
        model(torch.randn(4, 50)).square().sum().backward()  # eval mode, gradient on: no cache involved
        optimizer.step()
    elif event == "load_state_dict":
        state = {k: v + 0.2 for k, v in model.state_dict().items() if "givens_angles" in k}
        model.load_state_dict(state, strict=False)
    elif event == "load_state_dict(assign)":
        state = {k: v.clone() + 0.2 for k, v in model.state_dict().items() if "givens_angles" in k}
        model.load_state_dict(state, strict=False, assign=True)
    elif event == "merge and unmerge":
        model.merge_adapter()
        model.unmerge_adapter()  # the exact inverse; the cache is dropped by both
    elif event == "another adapter":
        model.add_adapter("other", GivensConfig(target_modules=["proj"], init_weights=False))
        model.set_adapter("other")
    elif event == "adapter deleted":
        model.add_adapter("other", GivensConfig(target_modules=["proj"], init_weights=False))
        model.set_adapter("other")
        with torch.no_grad():
            model(torch.randn(2, 50))
        model.delete_adapter("default")
    elif event == "moved":
        model.to(torch.float64).to(torch.float32)
    elif event == "training resumed":
        model.train()
        model.eval()
    elif event == "written through .data":
        angles.data.copy_(angles.data + 0.3)  # bypasses the version counter: dropped by hand
        assert drop_rotation_caches(model) == 1
    else:
        raise AssertionError(event)


EVENTS = [
    "in-place change",
    "optimizer step",
    "fused optimizer step",  # writes without bumping the version counters
    "foreach optimizer step",
    "load_state_dict",
    "load_state_dict(assign)",
    "merge and unmerge",
    "another adapter",
    "adapter deleted",
    "moved",
    "training resumed",
    "written through .data",
]


DROPPED_AT_ONCE = set(EVENTS) - {"in-place change"} - {e for e in EVENTS if e.endswith("optimizer step")}


@pytest.mark.parametrize("event", EVENTS)
def test_dropped_after_every_change(event):
    model = adapted("linear", 50, "strict")
    x = torch.randn(3, 50)
    with torch.no_grad():
        before = model(x)
    change(model, event)
    layer = layer_of(model)
    if event in DROPPED_AT_ONCE:
        assert not layer._rotation_cache.entries  # the event itself dropped the kept rotations
    model.eval()
    builds = layer._rotation_cache.builds
    with torch.no_grad():
        after = model(x)
    assert layer._rotation_cache.builds == builds + 1  # built anew from the parameters as they are now
    assert_close(after, rebuilt_each_call(model, x))
    if event not in ("merge and unmerge", "moved", "training resumed"):
        assert not torch.allclose(after, before)  # the change mattered, and the new rotation is the one used


def test_a_stale_entry_is_never_used_even_without_the_explicit_drops():
    """The version counters alone catch in-place changes, whatever path made them."""
    model = adapted("linear", 50, "scaled")
    layer = layer_of(model)
    x = torch.randn(3, 50)
    for parameter in (layer.givens_angles["default"], layer.givens_scale["default"]):
        with torch.no_grad():
            model(x)
            parameter.mul_(1.1)
            got = model(x)
        assert_close(got, rebuilt_each_call(model, x))
    assert layer._rotation_cache.builds == 3


def test_never_used_where_a_gradient_is_wanted():
    model = adapted("linear", 50, "strict")
    cache = layer_of(model)._rotation_cache
    x = torch.randn(3, 50)
    model.train()
    model(x).sum().backward()  # training
    model.eval()
    model(x).sum().backward()  # eval mode, trainable adapter
    model.requires_grad_(False)
    model(x.requires_grad_()).sum().backward()  # frozen adapter, gradient wanted at the input
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert cache.builds == 0 and not cache.entries
    grads = layer_of(model).givens_angles["default"].grad
    assert grads is not None and grads.abs().sum() > 0


def test_training_after_a_kept_rotation_trains_the_current_angles():
    model = adapted("linear", 50, "strict")
    x = torch.randn(3, 50)
    with torch.no_grad():
        model(x)
    model.train()
    assert not layer_of(model)._rotation_cache.entries
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        model(x).square().sum().backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert_close(model(x), rebuilt_each_call(model, x))


def test_untracked_parameters_are_not_cached():
    model = adapted("linear", 50, "strict")
    layer = layer_of(model)
    layer.givens_angles["default"].ds_id = 7  # as DeepSpeed ZeRO-3 marks its partitioned parameters
    with torch.no_grad():
        model(torch.randn(3, 50))
    assert layer._rotation_cache.builds == 0


def test_prepared_rotation_refuses_other_inputs():
    x = torch.randn(2, 20)
    prepared = prepare_rotation(x, torch.randn(19, 2, 2))
    with pytest.raises(ValueError, match="prepared for width 20"):
        prepared(torch.randn(2, 21))
    with pytest.raises(ValueError, match="float64"):
        prepared(x.double())


def test_backend_switch_rebuilds():
    model = adapted("linear", 50, "strict")
    cache = layer_of(model)._rotation_cache
    with torch.no_grad():
        model(torch.randn(3, 50))
        with use_backend("torch"):
            model(torch.randn(3, 50))
    assert cache.builds == 2


def test_kept_rotation_on_a_4bit_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    tiny_model(hidden_size=64, intermediate_size=96).save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AutoModelForCausalLM.from_pretrained(
            tmp_path,
            dtype=torch.float32,
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32),
        )
    model = get_peft_model(base, goft.GivensConfig(init_weights=False)).eval()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        kept = model(input_ids=ids).logits
        again = model(input_ids=ids).logits
    layers = [m for m in model.modules() if isinstance(m, GivensLayer)]
    assert all(m._rotation_cache.builds == 1 and m._rotation_cache.reuses == 1 for m in layers)
    assert torch.equal(kept, again)
    with torch.enable_grad():
        rebuilt = model(input_ids=ids).logits.detach()
    assert_close(kept, rebuilt, 1e-5)  # the 4-bit kernel rounds its inputs; the rotations are equal to 1e-6


def test_copying_a_model_copies_no_stale_rotation():
    model = adapted("linear", 50, "strict")
    x = torch.randn(3, 50)
    with torch.no_grad():
        model(x)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        layer_of(twin).givens_angles["default"].add_(0.5)
        assert_close(twin(x), rebuilt_each_call(twin, x))
