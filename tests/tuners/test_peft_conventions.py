"""goft's methods against the conventions peft checks for each of its own methods on small custom models (peft's
``tests/test_custom_models.py``), side by side with LoRA where the convention is one goft must share with peft.

Methods: ``givens`` strict (GOFT), quasi (qGOFT), with scaling (GOFT*), and SORSA; models: a plain MLP of
``nn.Linear`` layers with odd widths, GPT-2 (transformers ``Conv1D``) and a tiny LLaMA from ``conftest.py``.

Not repeated here (already covered): ``safe_merge`` refusing a NaN adapter, per-sample ``adapter_names`` batches and
one-layer half-precision forward/backward (tests/test_layer.py); reloading in a fresh process, ``unload()``,
``layers_to_transform`` and the LLaMA-sized trainable count (tests/test_peft_integration.py); SORSA's regulariser
(tests/test_sorsa.py).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch import nn

from goft import GivensConfig, SorsaConfig
from goft.tuners.givens.layer import GivensLayer
from goft.tuners.sorsa import SorsaLayer
from tests.support.training import perturb, train_steps

TARGETS = ["lin0", "lin1", "lin2"]
WIDTHS = {"lin0": (10, 21), "lin1": (21, 13), "lin2": (13, 7)}  # (in, out): odd and non-power-of-two on purpose
SORSA_RANK = 3

METHODS = ["goft", "qgoft", "goft_star", "sorsa"]
GIVENS_METHODS = ["goft", "qgoft", "goft_star"]


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0, self.lin1, self.lin2 = (nn.Linear(d, n) for d, n in WIDTHS.values())
        self.head = nn.Linear(7, 3)  # not adapted: a classifier head for modules_to_save

    def forward(self, x):
        return self.head(torch.tanh(self.lin2(torch.tanh(self.lin1(torch.tanh(self.lin0(x)))))))


def make_config(method: str, targets=TARGETS, **kwargs):
    """A random, non-identity adapter (SORSA starts at the identity: ``randomize`` moves it)."""
    if method == "lora":
        return LoraConfig(target_modules=targets, r=2, init_lora_weights=False, **kwargs)
    if method == "sorsa":
        return SorsaConfig(target_modules=targets, r=SORSA_RANK, **kwargs)
    modes = {"goft": {}, "qgoft": {"strict": False, "quasi": True}, "goft_star": {"strict": False, "scaling": True}}
    return GivensConfig(target_modules=targets, init_weights=False, **modes[method], **kwargs)


def randomize(model: nn.Module, adapter_name: str, seed: int = 7) -> None:
    """Move SORSA's trainable triplets away from their initial values (every other method starts random)."""
    perturb(
        [
            params[adapter_name]
            for layer in model.modules()
            if isinstance(layer, SorsaLayer) and adapter_name in layer.sorsa_U
            for params in (layer.sorsa_U, layer.sorsa_S, layer.sorsa_Vh)
        ],
        scale=0.1,
        seed=seed,
    )


def base_model(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP().eval()


def build(method: str, adapter_name: str = "default", base=None, **kwargs):
    base = base_model() if base is None else base
    torch.manual_seed(1)
    model = get_peft_model(base, make_config(method, **kwargs), adapter_name=adapter_name)
    randomize(model, adapter_name)
    return model.eval()


def add(model, method: str, adapter_name: str, **kwargs) -> None:
    torch.manual_seed(2)
    model.add_adapter(adapter_name, make_config(method, **kwargs))
    randomize(model, adapter_name, seed=8)


def inputs(dtype=torch.float32) -> torch.Tensor:
    return torch.randn(6, 10, generator=torch.Generator().manual_seed(3)).to(dtype)


def run(model, x=None):
    with torch.no_grad():
        return model(inputs() if x is None else x)


def of_adapter(name: str, adapter_name: str) -> bool:
    """Whether a parameter or buffer name is this adapter's (``…givens_angles.first``, ``…lora_A.first.weight``)."""
    return re.search(rf"\.{re.escape(adapter_name)}(\.|$)", name) is not None


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def tuner_layers(model) -> dict[str, BaseTunerLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def base_weights(model) -> dict[str, torch.Tensor]:
    return {n: m.get_base_layer().weight.detach().clone() for n, m in tuner_layers(model).items()}


# ---- save / load ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "pickle"])
@pytest.mark.parametrize("method", METHODS)
def test_save_and_load_round_trip_with_a_custom_adapter_name(tmp_path, method, safe_serialization):
    model = build(method, adapter_name="other")
    expected = run(model)
    model.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    folder = tmp_path / "other"  # peft saves a non-default adapter in a subfolder named after it
    weights = folder / ("adapter_model.safetensors" if safe_serialization else "adapter_model.bin")
    assert {p.name for p in folder.iterdir()} == {"adapter_config.json", weights.name}
    saved = load_file(weights) if safe_serialization else torch.load(weights, weights_only=True)

    # the adapter name never reaches the saved keys: the same adapter saved as "default" gives the same file
    reference = build(method)
    reference.save_pretrained(tmp_path / "as_default", safe_serialization=safe_serialization)
    as_default = (
        load_file(tmp_path / "as_default" / weights.name)
        if safe_serialization
        else torch.load(tmp_path / "as_default" / weights.name, weights_only=True)
    )
    assert saved and not any(of_adapter(key, "other") or of_adapter(key, "default") for key in saved)
    assert saved.keys() == as_default.keys()
    assert all(torch.equal(saved[key], as_default[key]) for key in saved)
    # exactly the adapter's tensors are saved (SORSA's initial triplets, buffers, included), minus the name
    assert saved.keys() == {re.sub(r"\.other(?=\.|$)", "", n) for n in model.state_dict() if of_adapter(n, "other")}

    loaded = PeftModel.from_pretrained(base_model(), folder, adapter_name="other").eval()
    assert loaded.active_adapters == ["other"] and list(loaded.peft_config) == ["other"]
    config = loaded.peft_config["other"]  # as saved, loaded for inference (peft records the custom model's class)
    assert config.to_dict() == {
        **model.peft_config["other"].to_dict(),
        "inference_mode": True,
        "auto_mapping": config.auto_mapping,
    }
    assert torch.equal(run(loaded), expected)


# ---- merging -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("safe_merge", [False, True], ids=["unsafe", "safe"])
@pytest.mark.parametrize("method", METHODS)
def test_merge_and_unload_equals_the_adapter_model(method, safe_merge):
    model = build(method)
    expected = run(model)
    assert not torch.allclose(expected, run(base_model()), atol=1e-3)  # the adapter really changes the output
    merged = model.merge_and_unload(safe_merge=safe_merge)
    assert isinstance(merged, MLP) and not tuner_layers(merged)
    torch.testing.assert_close(run(merged), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", *METHODS])
def test_merge_is_idempotent_and_unmerge_restores_the_base_weights(method):
    model = build(method)
    expected, before = run(model), base_weights(model)
    model.merge_adapter()
    merged_once = run(model)
    with pytest.warns(UserWarning, match="already merged"):
        model.merge_adapter()  # as for peft's own methods: a second merge changes nothing
    assert torch.equal(run(model), merged_once)
    torch.testing.assert_close(merged_once, expected, rtol=0, atol=1e-6)
    assert all(layer.merged_adapters == ["default"] for layer in tuner_layers(model).values())
    model.unmerge_adapter()
    for name, weight in base_weights(model).items():
        # float32: the round trip may cost a few ulps, never more (strict GOFT unmerges with the exact transpose)
        torch.testing.assert_close(weight, before[name], rtol=0, atol=4 * torch.finfo(torch.float32).eps)
    assert not any(layer.merged for layer in tuner_layers(model).values())
    torch.testing.assert_close(run(model), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_merging_only_the_adapters_named(method):
    model = build(method, adapter_name="first")
    add(model, method, "second")
    outputs = {}
    for active in (["first"], ["second"], ["first", "second"]):
        model.base_model.set_adapter(active)
        outputs[tuple(active)] = run(model)
    assert not torch.allclose(outputs[("first",)], outputs[("second",)], atol=1e-3)
    model.set_adapter("first")
    for names in (["second"], ["first", "second"]):
        merged = copy.deepcopy(model).merge_and_unload(adapter_names=names)
        torch.testing.assert_close(run(merged), outputs[tuple(names)], rtol=0, atol=1e-6)
    # merge_adapter(adapter_names=...) merges just those and leaves the others in the model
    model.merge_adapter(adapter_names=["second"])
    layers = tuner_layers(model).values()
    assert all(layer.merged_adapters == ["second"] for layer in layers)
    # as LoRA's layers do, a layer with a merged adapter applies no unmerged one on top
    torch.testing.assert_close(run(model), outputs[("second",)], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=re.escape("Cannot delete adapter(s) ['second'] while they are merged")):
        model.delete_adapter("second")
    model.unmerge_adapter()
    torch.testing.assert_close(run(model), outputs[("first",)], rtol=0, atol=1e-6)


# ---- dtypes --------------------------------------------------------------------------------------------------------

# largest |y − y_fp32| / max |y_fp32| allowed, for the adapter's forward and for the merged model
DTYPE_TOLERANCE = {torch.float64: 1e-6, torch.bfloat16: 2e-2, torch.float16: 3e-3}  # ~2.5 ulps of the dtype


@pytest.mark.parametrize("autocast_adapter_dtype", [True, False], ids=["autocast", "no_autocast"])
@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("method", METHODS)
def test_adapter_on_a_base_of_another_dtype(tmp_path, method, dtype, autocast_adapter_dtype):
    reference = build(method)
    expected = run(reference)
    reference.save_pretrained(tmp_path)
    scale, tolerance = expected.abs().max(), DTYPE_TOLERANCE[dtype]
    x = inputs(dtype)

    def loaded(config_method):
        folder = tmp_path if config_method == method else tmp_path / config_method
        if config_method != method:
            build(config_method).save_pretrained(folder)
        return PeftModel.from_pretrained(
            base_model().to(dtype), folder, autocast_adapter_dtype=autocast_adapter_dtype
        ).eval()

    model, lora = loaded(method), loaded("lora")
    # adapter weights take the dtype LoRA's take: fp32 for a half-precision base if autocast, else the base dtype
    dtypes = {p.dtype for n, p in model.named_parameters() if of_adapter(n, "default")}
    assert dtypes == {p.dtype for n, p in lora.named_parameters() if of_adapter(n, "default")}
    assert dtypes == {torch.float32 if autocast_adapter_dtype and dtype != torch.float64 else dtype}

    out = run(model, x)
    assert out.dtype == dtype
    assert (out.double() - expected.double()).abs().max() <= tolerance * scale
    for safe_merge in (False, True):
        model.merge_adapter(safe_merge=safe_merge)
        assert (run(model, x).double() - expected.double()).abs().max() <= tolerance * scale
        model.unmerge_adapter()
    merged = model.merge_and_unload()
    assert next(merged.parameters()).dtype == dtype
    assert (run(merged, x).double() - expected.double()).abs().max() <= tolerance * scale


@pytest.mark.parametrize("method", METHODS)
def test_merging_into_an_integer_weight_is_refused_clearly(method):
    base = base_model()
    base.lin1.weight = nn.Parameter(torch.randint(-3, 4, (13, 21)), requires_grad=False)
    model = build(method, base=base)
    layer = model.base_model.model.lin1
    before = layer.get_base_layer().weight.clone()
    with pytest.raises(NotImplementedError, match=r"Cannot merge .*dtype torch\.int64.*full-precision"):
        model.merge_adapter()
    assert torch.equal(layer.get_base_layer().weight, before) and not layer.merged


# ---- several adapters ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_several_adapters_switch_train_and_delete_like_lora(method):
    def walk(method):
        """The states peft's convention fixes, recorded for one method: active adapters and trainable adapters."""
        model = build(method, adapter_name="first")
        out_first = run(model)
        add(model, method, "second")
        states = [(model.active_adapters, adapters_with_grad(model))]
        assert torch.equal(run(model), out_first)  # adding does not activate
        model.set_adapter("second")
        out_second = run(model)
        assert not torch.allclose(out_second, out_first, atol=1e-3)
        states.append((model.active_adapters, adapters_with_grad(model)))
        model.base_model.set_adapter(["first", "second"])  # combined adapters: both act, both train
        both = run(model)
        assert not torch.allclose(both, out_first, atol=1e-3) and not torch.allclose(both, out_second, atol=1e-3)
        states.append((model.active_adapters, adapters_with_grad(model)))
        model.set_adapter("first")
        assert torch.equal(run(model), out_first)
        states.append((model.active_adapters, adapters_with_grad(model)))
        model.set_requires_grad("second")  # explicit: the inactive one trains too, the active one is untouched
        states.append((model.active_adapters, adapters_with_grad(model)))
        model.set_adapter("second")
        with pytest.warns(UserWarning, match="Adapter second was active which is now deleted"):
            model.delete_adapter("second")
        states.append((model.active_adapters, adapters_with_grad(model)))
        assert list(model.peft_config) == ["first"]
        assert not any(of_adapter(n, "second") for n in model.state_dict())  # parameters and buffers gone
        assert all(layer._all_available_adapter_names() == ["first"] for layer in tuner_layers(model).values())
        assert torch.equal(run(model), out_first)
        return states

    def adapters_with_grad(model):
        return sorted({name for name in ("first", "second") for n in trainable(model) if of_adapter(n, name)})

    states = walk(method)
    assert states == walk("lora")
    assert states == [
        (["first"], ["first"]),
        (["second"], ["second"]),
        (["first", "second"], ["first", "second"]),
        (["first"], ["first"]),
        (["first"], ["first", "second"]),
        (["first"], ["first"]),
    ]


@pytest.mark.parametrize("method", METHODS)
def test_weighted_combination_is_lora_only_api_and_active_adapters_combine_instead(method):
    """peft offers ``add_weighted_adapter`` for LoRA (and IA³) only; on goft's methods it must fail loudly rather than
    half-work. Combining adapters is done by activating several (checked in the two tests above)."""
    lora = build("lora", adapter_name="first")
    add(lora, "lora", "second")
    lora.add_weighted_adapter(["first", "second"], [0.5, 0.5], adapter_name="mix", combination_type="linear")
    assert "mix" in lora.peft_config
    model = build(method, adapter_name="first")
    add(model, method, "second")
    with pytest.raises(AttributeError, match="add_weighted_adapter"):
        model.add_weighted_adapter(["first", "second"], [0.5, 0.5], adapter_name="mix")
    assert list(model.peft_config) == ["first", "second"]


# ---- disabling -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_disabled_adapters_give_the_base_output_exactly(method):
    base_out = run(base_model())
    model = build(method)
    adapted = run(model)
    assert not torch.allclose(adapted, base_out, atol=1e-3)
    with model.disable_adapter():
        assert torch.equal(run(model), base_out)
    assert torch.equal(run(model), adapted)
    model.disable_adapter_layers()
    assert torch.equal(run(model), base_out)
    model.enable_adapter_layers()
    assert torch.equal(run(model), adapted)
    # a merged adapter is unmerged by a disabled forward, as peft's layers do: base output up to float rounding
    model.merge_adapter()
    with model.disable_adapter():
        torch.testing.assert_close(run(model), base_out, rtol=0, atol=1e-6)
    assert not any(layer.merged for layer in tuner_layers(model).values())
    torch.testing.assert_close(run(model), adapted, rtol=0, atol=1e-6)


# ---- requires_grad -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_trainable", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_requires_grad_after_loading(tmp_path, method, is_trainable):
    build(method, modules_to_save=["head"]).save_pretrained(tmp_path)
    model = PeftModel.from_pretrained(base_model(), tmp_path, is_trainable=is_trainable)
    assert model.peft_config["default"].inference_mode is (not is_trainable)
    if not is_trainable:
        assert not trainable(model)
        return
    adapter = {n for n, _ in model.named_parameters() if of_adapter(n, "default")}
    assert trainable(model) == adapter
    assert {n.split(".")[2] for n in adapter} == {*TARGETS, "head"}  # every adapted layer, and the saved head


@pytest.mark.parametrize("other_trainable", [False, True], ids=["other_frozen", "other_trainable"])
@pytest.mark.parametrize("main_trainable", [False, True], ids=["main_frozen", "main_trainable"])
@pytest.mark.parametrize("method", METHODS)
def test_load_adapter_trainability_matches_lora(tmp_path, method, main_trainable, other_trainable):
    """``load_adapter(path, "other", is_trainable=...)`` of an adapter that is not the active one.

    peft 0.21.2's ``PeftModel.load_adapter`` calls ``set_requires_grad(adapter_name)`` when ``is_trainable=True``, so
    LoRA's loaded, inactive adapter is trainable (peft 0.20.x left it frozen); goft must do exactly what LoRA does, and
    the active adapter keeps its own trainability. Extends test_peft_integration.py's
    ``test_layers_keep_peft_layer_contract_like_lora`` (LLaMA, both loads trainable) to every combination.
    """

    def flags(method):
        folder = tmp_path / method
        build(method).save_pretrained(folder)
        model = PeftModel.from_pretrained(base_model(), folder, is_trainable=main_trainable)
        model.load_adapter(folder, adapter_name="other", is_trainable=other_trainable)
        assert model.active_adapters == ["default"]
        loaded = {
            name: {p.requires_grad for n, p in model.named_parameters() if of_adapter(n, name)}
            for name in ("default", "other")
        }
        model.set_adapter("other")  # then the usual rule: the active adapter trains, the others are frozen
        switched = {
            name: {p.requires_grad for n, p in model.named_parameters() if of_adapter(n, name)}
            for name in ("default", "other")
        }
        assert all(of_adapter(n, "default") or of_adapter(n, "other") for n in trainable(model))  # base frozen
        return loaded, switched

    ours, lora = flags(method), flags("lora")
    assert ours == lora
    assert lora[0]["other"] == {other_trainable}  # what LoRA does in peft >= 0.21 (the docstring's claim)
    loaded, switched = ours
    assert loaded["default"] == {main_trainable}  # loading another adapter leaves the active one as it was
    assert switched == {"default": {False}, "other": {True}}


# ---- training ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_training_changes_the_active_adapter_only(method):
    model = build(method, adapter_name="first")
    add(model, method, "second")
    model.train()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    target = torch.randn(6, 3, generator=torch.Generator().manual_seed(5))
    losses = train_steps(
        model, 8, lr=5e-2, loss=lambda: nn.functional.mse_loss(model(inputs()), target), parameters=model.parameters()
    )  # all parameters: frozen ones get no gradient
    assert losses[-1] < 0.9 * losses[0]
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {n for n, _ in model.named_parameters() if of_adapter(n, "first")}  # base, "second": bitwise


# ---- parameter counts ----------------------------------------------------------------------------------------------


def expected_trainable(method: str) -> int:
    per_layer = {
        "goft": lambda d, n: d - 1,
        "qgoft": lambda d, n: 4 * (d - 1),
        "goft_star": lambda d, n: (d - 1) + d,
        "sorsa": lambda d, n: min(SORSA_RANK, d, n) * (n + d + 1),
    }[method]
    return sum(per_layer(d, n) for d, n in WIDTHS.values())


@pytest.mark.parametrize("method", METHODS)
def test_trainable_parameter_count(method, capsys):
    model = build(method)
    base_total = sum(p.numel() for p in base_model().parameters())
    count = expected_trainable(method)
    assert model.get_nb_trainable_parameters() == (count, base_total + count)
    add(model, method, "second")  # inactive: counted in the total only
    add(model, method, "third", modules_to_save=["head"])
    head = sum(p.numel() for p in MLP().head.parameters())
    assert model.get_nb_trainable_parameters() == (count, base_total + 3 * count + head)
    model.set_adapter("third")
    trainable_now, total = model.get_nb_trainable_parameters()
    assert trainable_now == count + head == sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.print_trainable_parameters()
    assert f"trainable params: {trainable_now:,} || all params: {total:,}" in capsys.readouterr().out


# ---- modules_to_save -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_modules_to_save_head_is_trained_saved_and_merged(tmp_path, method):
    model = build(method, modules_to_save=["head"])
    original_head = {n: p.detach().clone() for n, p in base_model().head.named_parameters()}
    assert {n for n in trainable(model) if ".head." in n} == {
        "base_model.model.head.modules_to_save.default.weight",
        "base_model.model.head.modules_to_save.default.bias",
    }
    model.train()
    train_steps(
        model,
        3,
        lr=0.1,
        loss=lambda: model(inputs()).pow(2).sum(),
        optimizer=torch.optim.SGD,
        parameters=model.parameters(),
    )
    model.eval()
    head = model.base_model.model.head
    assert not torch.equal(head.modules_to_save["default"].weight, original_head["weight"])
    assert all(torch.equal(p, original_head[n]) for n, p in head.original_module.named_parameters())
    expected = run(model)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert torch.equal(saved["base_model.model.head.weight"], head.modules_to_save["default"].weight)
    assert torch.equal(run(PeftModel.from_pretrained(base_model(), tmp_path)), expected)
    torch.testing.assert_close(run(model.merge_and_unload()), expected, rtol=0, atol=1e-6)


# ---- transformers models: Conv1D (GPT-2) and LLaMA -----------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_layers_expose_in_and_out_features_like_lora(method, tiny_gpt2):
    """Every tuner layer exposes the (in_features, out_features) of what it wraps, as LoRA's do (odd widths here;
    Conv1D stores its weight as (in, out))."""

    def features(model):
        return {n: (m.in_features, m.out_features) for n, m in tuner_layers(model).items()}

    model = build(method)
    assert features(model) == features(build("lora")) == {f"base_model.model.{n}": w for n, w in WIDTHS.items()}
    if method == "sorsa":
        with pytest.raises(ValueError, match="SORSA supports full-precision torch.nn.Linear layers, not Conv1D"):
            get_peft_model(tiny_gpt2, make_config(method, targets=["c_attn"]))
        return
    gpt2 = features(get_peft_model(copy.deepcopy(tiny_gpt2), make_config(method, targets=["c_attn", "c_fc"])))
    lora = make_config("lora", targets=["c_attn", "c_fc"], fan_in_fan_out=True)  # LoRA must be told about Conv1D
    assert gpt2 == features(get_peft_model(tiny_gpt2, lora))
    assert set(gpt2.values()) == {(48, 144), (48, 192)}


@pytest.mark.parametrize("method", METHODS)
def test_transformers_model_save_load_merge_unmerge(tmp_path, request, method, input_ids):
    """The same conventions on a real transformers model: GPT-2's Conv1D for GOFT's modes, LLaMA for SORSA."""
    base = request.getfixturevalue("tiny_llama" if method == "sorsa" else "tiny_gpt2")
    fresh = copy.deepcopy(base)
    base_logits = run(base, input_ids).logits
    model = get_peft_model(base, make_config(method, targets=None), adapter_name="other").eval()
    randomize(model, "other")
    if method != "sorsa":
        assert all(isinstance(m, GivensLayer) for m in tuner_layers(model).values())
    expected = run(model, input_ids).logits
    assert not torch.allclose(expected, base_logits, atol=1e-4)
    with model.disable_adapter():
        assert torch.equal(run(model, input_ids).logits, base_logits)

    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "other", adapter_name="other").eval()
    assert torch.equal(run(loaded, input_ids).logits, expected)

    before = base_weights(loaded)
    loaded.merge_adapter(safe_merge=True)
    torch.testing.assert_close(run(loaded, input_ids).logits, expected, rtol=0, atol=2e-5)
    loaded.unmerge_adapter()
    for name, weight in base_weights(loaded).items():
        torch.testing.assert_close(weight, before[name], rtol=0, atol=1e-6)
    merged = loaded.merge_and_unload()
    assert not tuner_layers(merged)
    torch.testing.assert_close(run(merged, input_ids).logits, expected, rtol=0, atol=2e-5)
