"""Retention evaluation: effective weights, neuron angles, output shift on general text, task metrics, the recipe."""

import copy
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import HRAConfig, LoraConfig, OFTConfig, RoadConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

import goft
from goft.data.arguments import DataArguments
from goft.data.loading import load_recipe_dataset
from goft.data.stages import SFT
from goft.errors import RecipeError
from goft.evaluation import assets, runner
from goft.evaluation.model_io import adapter_off, merged_for_scoring
from goft.evaluation.report import EVALUATION_JSON, render_table, write_evaluation
from goft.evaluation.runner import BaseReference, EvaluationSets, evaluate_adapter, evaluate_adapters, held_out_split
from goft.evaluation.shift import BaseLogitsCache, general_text_shift, load_general_text
from goft.evaluation.tasks import task_metrics
from goft.evaluation.weights import (
    adapted_linear_layers,
    effective_weight,
    max_neuron_angle_change,
    neuron_angle_change,
    neuron_angle_changes,
)
from goft.io.outputs import refuse_finished_output
from goft.tuners.quantized import read_weight
from tests.support.data import dpo_rows, sft_rows, write_jsonl
from tests.support.models import save_tiny_chat_model
from tests.support.recipes import recipe_flags, run_script
from tests.support.training import perturb

TARGETS = ["q_proj", "v_proj", "down_proj"]
TEXTS = [
    "The old lighthouse keeper climbed the stairs every evening to light the lamp for passing ships.",
    "Bread rises because yeast turns sugar into gas, and the gas is trapped by the stretchy dough.",
    "In spring the river swells with melted snow and spreads across the low meadows.",
    "A good map shows not only roads but also hills, rivers and the places where people live.",
    "She tuned the violin slowly, listening to each string until the notes rang true.",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("retention") / "tiny-llama")


@pytest.fixture
def base(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


def save_adapter(base_model, config, folder: Path, scale: float = 0.3) -> Path:
    model = perturb(get_peft_model(copy.deepcopy(base_model), config), scale, seed=1)
    model.save_pretrained(folder)
    return folder


def givens():
    return goft.GivensConfig(target_modules=TARGETS)


def lora():
    return LoraConfig(target_modules=TARGETS, r=4)


METHODS = {
    "givens": givens,
    "givens-quasi-scaling": lambda: goft.GivensConfig(target_modules=TARGETS, strict=False, quasi=True, scaling=True),
    "sorsa": lambda: goft.SorsaConfig(target_modules=TARGETS, r=4),
    "lora": lora,
    "oft": lambda: OFTConfig(target_modules=TARGETS, r=0, oft_block_size=8, use_cayley_neumann=False),
    "hra": lambda: HRAConfig(target_modules=TARGETS, r=4),
    "road": lambda: RoadConfig(target_modules=TARGETS, group_size=4),
}


# ---- effective weights and neuron angles -------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(METHODS))
def test_effective_weight_is_the_base_at_init_and_the_merged_weight_after_a_change(base, method):
    model = get_peft_model(base, METHODS[method]())
    layers = adapted_linear_layers(model)
    assert len(layers) == 2 * len(TARGETS)
    for layer in layers.values():
        weight = layer.get_base_layer().weight.double()
        assert torch.equal(effective_weight(layer, enabled=False), weight)
        tolerance = 0.0 if method in ("givens", "lora") else 1e-12
        assert (effective_weight(layer, enabled=True) - weight).abs().max().item() <= tolerance
    perturb(model, 0.3, seed=1)
    tuned = {name: effective_weight(layer, enabled=True) for name, layer in layers.items()}
    merged = dict(copy.deepcopy(model).merge_and_unload().named_modules())
    for name, layer in layers.items():
        assert (tuned[name] - layer.get_base_layer().weight.double()).abs().max() > 1e-3  # the adapter did act
        merged_weight = merged[name.removeprefix("base_model.model.")].weight.double()
        torch.testing.assert_close(tuned[name], merged_weight, atol=1e-6, rtol=0)


def test_effective_weight_of_conv1d_layers_gpt2(tiny_gpt2):
    model = perturb(get_peft_model(tiny_gpt2, goft.GivensConfig()), 0.5, seed=1)
    layers = adapted_linear_layers(model)
    tuned = {name: effective_weight(layer) for name, layer in layers.items()}
    merged = dict(copy.deepcopy(model).merge_and_unload().named_modules())
    for name, layer in layers.items():
        conv_weight = merged[name.removeprefix("base_model.model.")].weight  # Conv1D stores (in, out)
        torch.testing.assert_close(tuned[name], conv_weight.t().double(), atol=1e-6, rtol=0)
        assert torch.equal(effective_weight(layer, enabled=False), layer.get_base_layer().weight.t().double())
    assert max_neuron_angle_change(model) < 1e-6


@pytest.mark.parametrize("bits", [4, 8])
def test_effective_weight_of_bitsandbytes_layers_is_exact_for_the_dequantized_base(tiny_dir, bits):
    pytest.importorskip("bitsandbytes")
    if bits == 4:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    else:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = AutoModelForCausalLM.from_pretrained(
            tiny_dir, dtype=torch.float32, quantization_config=quantization
        )
        strict = perturb(get_peft_model(copy.deepcopy(quantized), givens()), 0.5, seed=1)
        for layer in adapted_linear_layers(strict).values():
            dequantized = read_weight(layer.get_base_layer()).double()
            assert torch.equal(effective_weight(layer, enabled=False), dequantized)
        assert max_neuron_angle_change(strict) < 1e-6  # a 4-/8-bit base does not blur the angle check
        assert max_neuron_angle_change(perturb(get_peft_model(quantized, lora()), 0.3, seed=1)) > 1.0


def test_neuron_angle_change_measures_angles_in_degrees_and_ignores_orthogonal_rotations():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(300, 64, dtype=torch.float64, generator=generator)
    weight[1] = weight[0] + 1e-9 * torch.randn(64, dtype=torch.float64, generator=generator)  # nearly parallel
    weight[2] = -3 * weight[3]  # exactly antiparallel
    rotation, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64, generator=generator))
    assert neuron_angle_change(weight, weight @ rotation) < 1e-6  # W' = W R keeps every angle (R Rᵀ = I)
    assert neuron_angle_change(weight, 5.0 * weight) < 1e-6  # norms do not matter
    plane = torch.zeros(3, 4, dtype=torch.float64)
    plane[0, 0] = plane[1, 0] = plane[2, 2] = 1.0
    turned = plane.clone()
    turned[1, :2] = torch.tensor([math.cos(math.radians(30)), math.sin(math.radians(30))], dtype=torch.float64)
    assert neuron_angle_change(plane, turned) == pytest.approx(30.0, abs=1e-9)  # pair (0, 1): 0° → 30°


def test_strict_givens_keeps_neuron_angles_and_lora_does_not(base):
    strict = perturb(get_peft_model(copy.deepcopy(base), givens()), 0.5, seed=1)
    changes = neuron_angle_changes(strict)
    assert set(changes) == set(adapted_linear_layers(strict))
    assert max(changes.values()) < 1e-6
    assert goft.orthogonality_error(strict) < 1e-6
    quasi = perturb(get_peft_model(copy.deepcopy(base), METHODS["givens-quasi-scaling"]()), 0.3, seed=1)
    assert max_neuron_angle_change(quasi) > 0.1
    low_rank = perturb(get_peft_model(copy.deepcopy(base), lora()), 0.3, seed=1)
    assert max_neuron_angle_change(low_rank) > 1.0
    assert max_neuron_angle_change(get_peft_model(base, lora())) == 0.0  # LoRA at init is the base


# ---- output distribution on general text -------------------------------------------------------------------------


@pytest.mark.parametrize("make_config", [givens, lora], ids=["givens", "lora"])
def test_kl_is_zero_at_identity_and_positive_after_a_change(base, tokenizer, make_config):
    model = get_peft_model(base, make_config())
    at_init = general_text_shift(model, tokenizer, TEXTS, max_length=64, batch_size=2)
    assert at_init["kl_base_tuned"] == 0.0
    assert at_init["perplexity_change"] == 0.0 and at_init["perplexity_base"] == at_init["perplexity_tuned"]
    lengths = [min(len(tokenizer(t)["input_ids"]), 64) for t in TEXTS]
    assert at_init["tokens"] == sum(lengths) - len(TEXTS)
    perturb(model, 0.3, seed=1)
    changed = general_text_shift(model, tokenizer, TEXTS, max_length=64, batch_size=2)
    assert changed["kl_base_tuned"] > 1e-4
    assert changed["perplexity_base"] == pytest.approx(at_init["perplexity_base"], rel=1e-6)
    assert changed["perplexity_change"] != 0.0
    one_by_one = general_text_shift(model, tokenizer, TEXTS, max_length=64, batch_size=1)  # padding changes nothing
    assert one_by_one["kl_base_tuned"] == pytest.approx(changed["kl_base_tuned"], rel=1e-4)
    # the same KL straight from its definition, on the first text
    ids = tokenizer(TEXTS[0], return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        tuned = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        with model.disable_adapter():
            plain = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    direct = (plain.exp() * (plain - tuned)).sum(-1).mean().item()
    alone = general_text_shift(model, tokenizer, TEXTS[:1], max_length=64)
    assert alone["kl_base_tuned"] == pytest.approx(direct, rel=1e-9)


def test_base_logits_cache_gives_identical_results_and_is_reused(base, tokenizer):
    cache = BaseLogitsCache()
    first = perturb(get_peft_model(copy.deepcopy(base), givens()), 0.3, seed=1)
    second = perturb(get_peft_model(copy.deepcopy(base), lora()), 0.3, seed=1)
    for model in (first, second):
        uncached = general_text_shift(model, tokenizer, TEXTS, max_length=64, batch_size=2)
        cached = general_text_shift(model, tokenizer, TEXTS, max_length=64, batch_size=2, base_cache=cache)
        assert cached == uncached  # bit for bit: a disabled adapter runs the base layers alone
    assert len(cache.batches) == math.ceil(len(TEXTS) / 2) and cache.used_bytes > 0
    with_calls = []
    cache.logits(0, cache.batches[0][0], lambda: with_calls.append(1))
    assert not with_calls  # served from the cache
    other_ids = cache.batches[0][0] + 1
    assert cache.logits(0, other_ids, lambda: torch.zeros(1)).shape == (1,)  # other tokens: computed afresh
    small = BaseLogitsCache(budget_bytes=0)
    general_text_shift(first, tokenizer, TEXTS, max_length=64, batch_size=2, base_cache=small)
    assert not small.batches  # over its budget, nothing is kept


def test_load_general_text_reads_the_paragraphs_and_refuses_bad_files(tmp_path):
    good = write_jsonl([{"text": t} for t in TEXTS], tmp_path / "good.jsonl")
    assert load_general_text(good) == TEXTS
    cases = {
        "missing.jsonl": None,
        "empty.jsonl": "",
        "broken.jsonl": '{"text": "a"\n',
        "other.jsonl": '{"content": "a"}\n',
        "blank.jsonl": '{"text": "  "}\n',
    }
    messages = {
        "missing.jsonl": "does not exist",
        "empty.jsonl": "is empty",
        "broken.jsonl": "not valid JSONL",
        "other.jsonl": "has no `text` column",
        "blank.jsonl": "non-empty string",
    }
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_text(content)
        with pytest.raises(RecipeError, match=messages[name]):
            load_general_text(tmp_path / name)
    assert len(load_general_text(assets.GENERAL_TEXT)) >= 30  # shipped as package data


# ---- task metrics ------------------------------------------------------------------------------------------------


def test_preference_metrics_are_zero_at_identity_and_match_direct_log_probs(base, tokenizer):
    pairs = Dataset.from_list(dpo_rows(6))
    model = get_peft_model(base, givens())
    at_init = task_metrics(model, tokenizer, pairs, 6)
    assert at_init["task"] == "preference" and at_init["samples"] == 6
    assert at_init["reward_margin"] == 0.0 and at_init["preference_accuracy"] == 0.0
    assert at_init["chosen_preferred_base"] == at_init["chosen_preferred_tuned"]
    assert at_init["preference_loss_tuned"] == at_init["preference_loss_base"] == math.log(2)  # σ(0) = 1/2
    perturb(model, 0.5, seed=1)
    changed = task_metrics(model, tokenizer, pairs, 6)
    assert changed["reward_margin"] != 0.0

    def logp(row: dict, key: str) -> float:  # log p(answer | prompt) straight from the chat template
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=False).rstrip()  # up to <|im_end|>
        ids = tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        return sum(log_probs[i - 1, ids[0, i]].item() for i in range(start, ids.shape[1]))

    margins = []
    for row in dpo_rows(6):
        tuned = logp(row, "chosen") - logp(row, "rejected")
        with model.disable_adapter():
            plain = logp(row, "chosen") - logp(row, "rejected")
        margins.append(tuned - plain)
    assert changed["reward_margin"] == pytest.approx(sum(margins) / 6, rel=1e-5, abs=1e-6)
    assert changed["preference_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 6)
    # preference loss: the mean of −log σ(m) = log(1 + e^(−m)) over the pairs
    expected_loss = sum(math.log1p(math.exp(-m)) for m in margins) / 6
    assert changed["preference_loss_tuned"] == pytest.approx(expected_loss, rel=1e-5)


def test_sft_task_metric_is_exact_match_with_the_adapter_off_and_on(base, tokenizer):
    model = get_peft_model(base, givens())
    metrics = task_metrics(model, tokenizer, Dataset.from_list(sft_rows(4)), 3)
    assert metrics["task"] == "exact_match" and metrics["samples"] == 3
    assert metrics["exact_match_base"] == metrics["exact_match_tuned"]  # identity adapter: same greedy answers
    assert metrics["answer_nll_base"] == metrics["answer_nll_tuned"] > 0
    # the answer NLL from its definition: the reference answer's tokens given the prompt, per token
    perturb(model, 0.3, seed=1)
    changed = task_metrics(model, tokenizer, Dataset.from_list(sft_rows(4)), 1)
    messages = sft_rows(1)[0]["messages"]
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False).rstrip()  # no template newline after the turn
    assert full.endswith("<|im_end|>")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    answer = ids[0, len(prompt_ids) :]
    direct = -log_probs[len(prompt_ids) - 1 : -1].gather(1, answer.unsqueeze(1)).mean().item()
    assert changed["answer_nll_tuned"] == pytest.approx(direct, rel=1e-6)


# ---- scoring with the adapter merged ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(METHODS))
def test_merged_scoring_matches_the_adapter_and_restores_the_exact_base(base, method):
    model = perturb(get_peft_model(copy.deepcopy(base), METHODS[method]()), 0.3, seed=1).eval()
    ids = torch.tensor([[5, 9, 2, 33, 17, 8, 41]])
    with torch.no_grad():
        tuned, plain = model(input_ids=ids).logits, base(input_ids=ids).logits
        with adapter_off(model):
            assert torch.equal(model(input_ids=ids).logits, plain)
        weights = {name: t.clone() for name, t in model.state_dict().items()}
        with merged_for_scoring(model):
            assert all(m.merged for m in model.modules() if isinstance(m, BaseTunerLayer))
            merged = model(input_ids=ids).logits
            with adapter_off(model):  # the saved base weights, exactly
                assert torch.equal(model(input_ids=ids).logits, plain)
            assert torch.equal(model(input_ids=ids).logits, merged)
        assert not any(m.merged for m in model.modules() if isinstance(m, BaseTunerLayer))
        assert all(torch.equal(t, weights[name]) for name, t in model.state_dict().items())
        assert torch.equal(model(input_ids=ids).logits, tuned)
    assert not torch.allclose(tuned, plain, atol=1e-4)  # the adapter does change the output ...
    torch.testing.assert_close(merged, tuned, atol=2e-5, rtol=1e-4)  # ... and merged it changes it the same way


def test_merged_scoring_restores_the_base_after_an_error_and_skips_quantized_bases(base, tiny_dir):
    model = perturb(get_peft_model(copy.deepcopy(base), givens()), 0.3, seed=1)
    weights = {name: t.clone() for name, t in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="stop"), merged_for_scoring(model):
        raise RuntimeError("stop")
    assert all(torch.equal(t, weights[name]) for name, t in model.state_dict().items())
    assert not hasattr(model, "_goft_merged_for_scoring")
    quantized = AutoModelForCausalLM.from_pretrained(
        tiny_dir, quantization_config=BitsAndBytesConfig(load_in_8bit=True), dtype=torch.float32
    )
    model = get_peft_model(quantized, givens())
    with merged_for_scoring(model):  # a quantized base is scored unmerged: merging would re-quantize it
        assert not any(m.merged for m in model.modules() if isinstance(m, BaseTunerLayer))


# ---- one adapter, several adapters -------------------------------------------------------------------------------


def test_evaluate_adapter_unloads_and_leaves_the_base_unchanged(base, tokenizer, tmp_path):
    strict_dir = save_adapter(base, givens(), tmp_path / "givens", scale=0.5)
    lora_dir = save_adapter(base, lora(), tmp_path / "lora")
    ids = tokenizer(TEXTS[1], return_tensors="pt")["input_ids"]
    before = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    with torch.no_grad():
        logits_before = base(input_ids=ids).logits
    results = {}
    for name, folder in (("givens", strict_dir), ("lora", lora_dir)):
        sets = EvaluationSets(general_text=None, retention_questions=None, open_instructions=None, max_length=48)
        reference = BaseReference(texts=TEXTS[:3], questions=None, instructions=None)
        results[name] = evaluate_adapter(base, tokenizer, folder, reference, sets)
        after = base.state_dict()
        assert set(after) == set(before)
        assert all(torch.equal(after[key], before[key]) for key in before)
        assert not any(isinstance(module, BaseTunerLayer) for module in base.modules())
        with torch.no_grad():
            assert torch.equal(base(input_ids=ids).logits, logits_before)
        saved = load_file(folder / "adapter_model.safetensors")
        assert results[name]["trainable_parameters"] == sum(t.numel() for t in saved.values())
    strict, low_rank = results["givens"], results["lora"]
    assert strict["method"] == "GIVENS" and strict["label"] == "givens (strict)"
    assert strict["orthogonality_error"] is not None and strict["orthogonality_error"] < 1e-6
    assert strict["max_neuron_angle_change_deg"] < 1e-6 and strict["kl_base_tuned"] > 0
    assert low_rank["method"] == "LORA" and low_rank["orthogonality_error"] is None
    assert low_rank["max_neuron_angle_change_deg"] > 1.0 and low_rank["kl_base_tuned"] > 0
    assert strict["task"] is None
    table = render_table([strict, low_rank])
    assert table.count("\n") == 4 and "givens (strict)" in table and "| lora |" in table


def write_run_record(adapter_dir, data) -> None:
    """The `goft_run.json` of an SFT run on the file `data` with a quarter held out (seed 7), in `adapter_dir`."""
    record = {
        "dataset_name": str(data),
        "dataset_config": None,
        "dataset_train_split": "train",
        "dataset_test_split": "test",
        "dataset_test_size": 0.25,
        "seed": 7,
        "columns": ["messages"],
    }
    (adapter_dir / "goft_run.json").write_text(json.dumps({"stage": "sft", "data": record}))


def test_evaluate_adapters_rebuilds_each_runs_held_out_split(base, tiny_dir, tmp_path):
    data = write_jsonl(sft_rows(16), tmp_path / "sft.jsonl")
    texts = write_jsonl([{"text": t} for t in TEXTS[:2]], tmp_path / "texts.jsonl")
    with_run = save_adapter(base, givens(), tmp_path / "with-run")
    write_run_record(with_run, data)
    without_run = save_adapter(base, lora(), tmp_path / "without-run")
    expected = load_recipe_dataset(DataArguments(dataset_name=str(data), dataset_test_size=0.25), SFT, 7)
    assert held_out_split(with_run)["messages"] == expected["test"]["messages"]
    assert held_out_split(without_run) is None
    sets = EvaluationSets(
        general_text=texts, retention_questions=None, open_instructions=None, task_samples=3, max_length=48
    )
    results = evaluate_adapters([with_run, without_run], sets=sets)
    assert [r["adapter"] for r in results] == [str(with_run), str(without_run)]
    assert results[0]["task"]["task"] == "exact_match" and results[0]["task"]["samples"] == 3
    assert results[1]["task"] is None
    assert results[0]["base_model"] == results[1]["base_model"] == str(tiny_dir)


def test_bad_input_is_refused_before_any_model_is_loaded(base, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(runner, "load_causal_lm", no_loading)
    texts = write_jsonl([{"text": t} for t in TEXTS], tmp_path / "texts.jsonl")
    good = save_adapter(base, lora(), tmp_path / "good")
    (tmp_path / "no-config").mkdir()
    other = tmp_path / "other-base"
    other.mkdir()
    config = json.loads((good / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/elsewhere/model"}))
    cases = [
        ([tmp_path / "missing"], texts, "does not exist"),
        ([tmp_path / "no-config"], texts, "has no adapter_config.json"),
        ([good, other], texts, "different base models"),
        ([good], tmp_path / "missing.jsonl", "general-text file .* does not exist"),
        ([], texts, "at least one adapter"),
    ]
    for adapters, general_text, message in cases:
        with pytest.raises(RecipeError, match=message):
            evaluate_adapters(adapters, sets=EvaluationSets(general_text=general_text))
    write_evaluation([], tmp_path / "eval")
    with pytest.raises(RecipeError, match="already holds an evaluation"):
        refuse_finished_output(tmp_path / "eval", EVALUATION_JSON, "an evaluation", overwrite=False)
    refuse_finished_output(tmp_path / "eval", EVALUATION_JSON, "an evaluation", overwrite=True)


# ---- the recipe --------------------------------------------------------------------------------------------------


def recipe(args: list[str]):
    return run_script("evaluate.py", args, timeout=300)


@pytest.mark.slow
def test_evaluate_recipe_end_to_end(base, tmp_path):
    data = write_jsonl(sft_rows(16), tmp_path / "sft.jsonl")
    texts = write_jsonl([{"text": t} for t in TEXTS], tmp_path / "texts.jsonl")
    strict_dir = save_adapter(base, givens(), tmp_path / "givens", scale=0.5)
    write_run_record(strict_dir, data)
    lora_dir = save_adapter(base, lora(), tmp_path / "lora")
    output = tmp_path / "eval"
    result = recipe(
        recipe_flags(
            adapters=[strict_dir, lora_dir], general_text=texts, task_eval_samples=2, max_length=64, output_dir=output
        )
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    report = json.loads((output / "evaluation.json").read_text())
    strict, low_rank = report["results"]
    assert strict["method"] == "GIVENS" and low_rank["method"] == "LORA"
    assert strict["max_neuron_angle_change_deg"] < 1e-6 < 1.0 < low_rank["max_neuron_angle_change_deg"]
    assert strict["orthogonality_error"] < 1e-6 and low_rank["orthogonality_error"] is None
    assert strict["kl_base_tuned"] > 0 and low_rank["kl_base_tuned"] > 0
    assert strict["task"]["samples"] == 2 and low_rank["task"] is None
    table = (output / "evaluation.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 3  # header and one row per adapter
    assert str(strict_dir) in result.stdout and "exact match" in result.stdout

    bad_output = tmp_path / "bad-eval"
    bad = recipe(recipe_flags(adapters=tmp_path / "missing", general_text=texts, output_dir=bad_output))
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not exist" in errors[0], bad.stderr[-3000:]
    assert not bad_output.exists()


def test_run_records_are_read_by_one_reader_with_clear_errors(tmp_path):
    from goft.io.outputs import FINISHED_MARKER, read_run_record

    assert read_run_record(tmp_path) is None
    marker = tmp_path / FINISHED_MARKER
    marker.write_text(json.dumps({"stage": "sft", "data": {"dataset_name": "x.jsonl"}}))
    assert read_run_record(tmp_path)["stage"] == "sft"
    for text in ("{not json", "[1, 2]"):
        marker.write_text(text)
        with pytest.raises(RecipeError, match="is not a valid run record"):
            read_run_record(tmp_path)
    marker.write_text(json.dumps({"stage": "sft", "data": {"seed": 3}}))
    with pytest.raises(RecipeError, match="names no `dataset_name`"):
        held_out_split(tmp_path)
