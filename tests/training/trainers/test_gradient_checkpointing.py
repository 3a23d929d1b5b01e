"""Gradient checkpointing (TRL's default) with every adapter method: the gradients equal those without it, with and
without `use_reentrant`; and a recipe run with it on trains the same adapter as one with it off. Under ZeRO-3 and
FSDP the distributed tests train with it on against single-process references trained with it off."""

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from goft.training.adapters import build_adapter_config
from goft.training.arguments.cli import run_recipe
from goft.training.arguments.fields import AdapterArguments, ModelArguments
from tests.support.data import sft_rows, write_jsonl
from tests.support.models import save_tiny_chat_model
from tests.support.recipes import recipe_script, run_flags
from tests.support.training import perturb

# every method a recipe can train, at sizes that fit the tiny model (hidden 48, MLP 80)
METHODS = {
    "givens": {},
    "givens-quasi": {"givens_quasi": True},
    "givens-scaling": {"givens_scaling": True},
    "sorsa": {"adapter": "sorsa", "sorsa_r": 8},
    "hra": {"adapter": "hra", "hra_r": 4},
    "oft": {"adapter": "oft", "oft_block_size": 8},
    "boft": {"adapter": "boft", "boft_block_size": 8},
    "road": {"adapter": "road", "road_group_size": 8},
    "lora": {"adapter": "lora"},
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("gc") / "tiny")


def adapted_model(folder, method: str):
    """The tiny model with `method`'s adapter on every linear layer, moved off its identity start (seeded)."""
    overrides = {"adapter": "givens", "adapter_target_modules": ["all-linear"], **METHODS[method]}
    config = build_adapter_config(AdapterArguments(**overrides), ModelArguments())
    torch.manual_seed(0)  # some methods start from random tensors (HRA's reflections, LoRA's A)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), config)
    return perturb(model, 0.05, seed=5).train()


def adapter_gradients(model, checkpointing: dict | None) -> tuple[dict, int]:
    """The adapter's gradients of one causal-LM loss, and how often the first decoder layer's MLP ran forward."""
    if checkpointing is not None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()  # what TRL does for a frozen embedding under checkpointing
    calls = []
    layer = model.get_base_model().model.layers[0].mlp  # inside the checkpointed layer: run again when recomputed
    handle = layer.register_forward_pre_hook(lambda *_: calls.append(1))  # before: recomputing may stop inside
    ids = torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    handle.remove()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, len(calls)


@pytest.mark.parametrize("use_reentrant", [True, False], ids=["reentrant", "non-reentrant"])
@pytest.mark.parametrize("method", list(METHODS))
def test_gradients_with_checkpointing_equal_those_without(tiny_model, method, use_reentrant):
    reference, plain_calls = adapter_gradients(adapted_model(tiny_model, method), None)
    checkpointed, calls = adapter_gradients(adapted_model(tiny_model, method), {"use_reentrant": use_reentrant})
    assert (plain_calls, calls) == (1, 2)  # the layer really was recomputed in the backward pass
    assert reference.keys() == checkpointed.keys() and reference
    assert any(g.abs().max() > 0 for g in reference.values())
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


SFT = recipe_script("sft")


def sft_flags(model, data, output_dir, checkpointing: str, kwargs: str | None = None) -> list[str]:
    keys = {"adapter_target_modules": "all-linear", "gradient_checkpointing": checkpointing}
    if kwargs:
        keys["gradient_checkpointing_kwargs"] = kwargs
    return run_flags(model, data, output_dir, max_steps=3, save_strategy="no", seed=3, **keys)


def test_a_recipe_with_checkpointing_trains_the_adapter_it_trains_without(tiny_model, tmp_path):
    data = write_jsonl(sft_rows(24), tmp_path / "sft.jsonl")
    adapters = {}
    for name, checkpointing, kwargs in (
        ("off", "false", None),
        ("default", "true", None),
        ("reentrant", "true", '{"use_reentrant": true}'),
    ):
        output_dir = tmp_path / name
        run_recipe(SFT["make_parser"], SFT["main"], sft_flags(tiny_model, data, output_dir, checkpointing, kwargs))
        adapters[name] = load_file(output_dir / "adapter_model.safetensors")
    for name in ("default", "reentrant"):
        assert adapters[name].keys() == adapters["off"].keys()
        for key, tensor in adapters["off"].items():
            torch.testing.assert_close(adapters[name][key], tensor, rtol=0, atol=1e-6, msg=f"{name}: {key}")
