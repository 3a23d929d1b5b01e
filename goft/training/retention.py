"""Retention and forgetting of trained adapters against their base model.

Per adapter: the task metric with the adapter off and on (held-out split of its run), the shift of the next-token
distribution on general text (KL and perplexity), the orthogonality error of strict Givens adapters, and the largest
change of an angle between two neurons of any adapted layer (0 for an exactly orthogonal input-side rotation).
"""

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..config import GivensConfig
from ..orthogonality import orthogonality_error
from ..quantized import quantization_kind, read_weight
from .arguments import DataArguments
from .checkpoints import FINISHED_MARKER
from .data import DPO_COLUMNS, SFT_COLUMNS, load_recipe_dataset
from .errors import RecipeError
from .evaluation import exact_match
from .models import ADAPTER_CONFIG_FILE, load_causal_lm, load_tokenizer, resolve_model_source
from .preflight import check_adapters_fit

logger = logging.getLogger(__name__)

DEFAULT_GENERAL_TEXT = Path(__file__).resolve().parents[2] / "data" / "general_text.jsonl"
DEFAULT_SEED = 42  # TRL's default training seed: the split an explicit `dataset_name` gets without a run record
GRAM_ELEMENTS = 1 << 22  # entries of one chunk of the row-by-row cosine matrix (32 MiB in float64)
EXACT_PAIRS = 4096  # near-parallel row pairs measured with the difference formula at a time
NEAR_PARALLEL = 0.99  # |cos| above this: acos is ill-conditioned, use the difference formula instead
POSITIONS = 256  # token positions whose full-vocabulary log-probabilities are held at once


# ---- weights: effective matrices and the angles between neurons --------------------------------------------------


def _in_features(base: nn.Module) -> int:
    if isinstance(base, Conv1D):  # transformers' Conv1D stores its weight as (in, out)
        return int(base.weight.shape[0])
    features = getattr(base, "in_features", None)
    if features is None:
        raise TypeError(f"Cannot probe a {type(base).__name__}: it is not a linear layer (no `in_features`).")
    return int(features)


def _is_linear(base: nn.Module) -> bool:
    return isinstance(base, (nn.Linear, Conv1D))  # bitsandbytes' 4-/8-bit layers subclass nn.Linear


def _innermost_base(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(parent, base): the module that holds the innermost `base_layer`, and that base layer."""
    parent = layer
    while isinstance(getattr(parent.base_layer, "base_layer", None), nn.Module):
        parent = parent.base_layer
    return parent, parent.base_layer


def _dense_float64(base: nn.Module) -> nn.Linear:
    """A float64 `nn.Linear` holding the dequantized weight (and bias) of a bitsandbytes 4-/8-bit layer."""
    weight = read_weight(base).double()
    dense = nn.Linear(weight.shape[1], weight.shape[0], bias=base.bias is not None, dtype=torch.float64,
                      device=weight.device)
    dense.weight.data.copy_(weight)
    if base.bias is not None:
        dense.bias.data.copy_(base.bias.detach().double())
    return dense


@torch.no_grad()
def effective_weight(layer: BaseTunerLayer, enabled: bool = True) -> torch.Tensor:
    """The (out, in) weight the tuner `layer` applies, with its adapters on or off; rows are the output neurons.

    Works for any peft method whose adapted layer is affine in its input: a copy of the layer is probed with the
    identity, W' = (layer(I) − layer(0))ᵀ, in float64. A bitsandbytes 4-/8-bit base is dequantized in the copy first
    (the result is exact for the dequantized base); other non-float bases are probed in float32."""
    if not isinstance(layer, BaseTunerLayer):
        raise TypeError(f"Expected a peft tuner layer, got {type(layer).__name__}.")
    base = layer.get_base_layer()
    d = _in_features(base)
    probe = copy.deepcopy(layer)
    if quantization_kind(base) is not None:
        parent, quantized = _innermost_base(probe)
        parent.base_layer = _dense_float64(quantized)
        base = parent.base_layer
    dtype = torch.float64 if base.weight.dtype.is_floating_point else torch.float32
    if dtype == torch.float64:
        probe = probe.double()
    probe.eval()
    probe.enable_adapters(enabled)
    eye = torch.eye(d, dtype=dtype, device=base.weight.device).unsqueeze(0)  # one batch of d one-hot "tokens"
    zero = torch.zeros(1, 1, d, dtype=dtype, device=base.weight.device)
    return (probe(eye)[0] - probe(zero)[0]).t().contiguous().double()


def _pair_angles(units: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    a, b = units[rows], units[cols]
    # angle(a, b) = 2·atan2(‖a − b‖, ‖a + b‖) for unit a, b: accurate at every angle, 0 and π included
    return 2 * torch.atan2((a - b).norm(dim=1), (a + b).norm(dim=1))


@torch.no_grad()
def neuron_angle_change(base_weight: torch.Tensor, tuned_weight: torch.Tensor) -> float:
    """Largest |angle(wᵢ', wⱼ') − angle(wᵢ, wⱼ)| over all pairs of rows (neurons), in degrees, in float64.

    Well-separated pairs use acos of the cosine (error ≈ 1e-15 rad where |cos| ≤ 0.99); near-(anti)parallel pairs,
    where acos is ill-conditioned, are measured again with the difference formula. Chunked to bound memory."""
    if base_weight.shape != tuned_weight.shape or base_weight.dim() != 2:
        raise ValueError(f"Expected two weights of one (out, in) shape, got {tuple(base_weight.shape)} and "
                         f"{tuple(tuned_weight.shape)}.")
    # W' = W R with R Rᵀ = I keeps W' W'ᵀ = W Wᵀ: every row norm and inner product, so every angle, is kept
    base = nn.functional.normalize(base_weight.double(), dim=1)
    tuned = nn.functional.normalize(tuned_weight.to(base.device).double(), dim=1)
    n = base.shape[0]
    chunk = max(1, GRAM_ELEMENTS // n)
    worst = torch.zeros((), dtype=torch.float64, device=base.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        cos_base = base[start:stop] @ base[start:].t()  # pairs (i, j ≥ start): each unordered pair at least once
        cos_tuned = tuned[start:stop] @ tuned[start:].t()
        near = (cos_base.abs() > NEAR_PARALLEL) | (cos_tuned.abs() > NEAR_PARALLEL)
        change = (torch.acos(cos_tuned.clamp(-1, 1)) - torch.acos(cos_base.clamp(-1, 1))).abs()
        worst = torch.maximum(worst, change.masked_fill(near, 0).max())
        rows, cols = near.nonzero(as_tuple=True)
        rows, cols = rows + start, cols + start
        for first in range(0, rows.numel(), EXACT_PAIRS):
            r, c = rows[first:first + EXACT_PAIRS], cols[first:first + EXACT_PAIRS]
            change = (_pair_angles(tuned, r, c) - _pair_angles(base, r, c)).abs()
            worst = torch.maximum(worst, change.max())
    return math.degrees(worst.item())


def adapted_linear_layers(model: nn.Module) -> dict[str, BaseTunerLayer]:
    """The model's peft tuner layers that wrap a linear base (embeddings and other wrappers are left out)."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, BaseTunerLayer) and _is_linear(module.get_base_layer())}


def neuron_angle_changes(model: nn.Module) -> dict[str, float]:
    """Per adapted layer, the largest change (degrees) of an angle between two of its neurons, base vs adapted."""
    changes = {}
    for name, layer in adapted_linear_layers(model).items():
        base, tuned = effective_weight(layer, enabled=False), effective_weight(layer, enabled=True)
        changes[name] = neuron_angle_change(base, tuned)
    return changes


def max_neuron_angle_change(model: nn.Module) -> float:
    """Largest change (degrees) of the angle between any two neurons of any adapted layer, base vs adapted.

    An exactly orthogonal input-side rotation keeps it at 0: W' = W R gives W' W'ᵀ = W R Rᵀ Wᵀ = W Wᵀ
    (R Rᵀ = I), so every inner product and norm of rows, hence every angle, is unchanged."""
    return max(neuron_angle_changes(model).values(), default=0.0)


# ---- output distribution on general text ------------------------------------------------------------------------


def load_general_text(path) -> list[str]:
    """The paragraphs of a JSON Lines file with one `{"text": ...}` object a line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RecipeError(f"The general-text file {str(path)!r} does not exist (JSON Lines, one {{\"text\": ...}} "
                          "object a line).")
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise RecipeError(f"The general-text file {str(path)!r} is not valid JSONL: {error.msg} "
                              f"(line {number}, column {error.colno}).") from None
        if not isinstance(record, dict) or "text" not in record:
            raise RecipeError(f"Line {number} of the general-text file {str(path)!r} has no `text` column; every "
                              "line must be an object like {\"text\": \"...\"}.")
        if not isinstance(record["text"], str) or not record["text"].strip():
            raise RecipeError(f"Line {number} of the general-text file {str(path)!r}: `text` must be a non-empty "
                              "string.")
        texts.append(record["text"])
    if not texts:
        raise RecipeError(f"The general-text file {str(path)!r} is empty.")
    return texts


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _adapter_off(model):
    if not hasattr(model, "disable_adapter"):
        raise TypeError(f"Expected a peft model (with `disable_adapter`), got {type(model).__name__}.")
    return model.disable_adapter()


@contextlib.contextmanager
def _scoring(model, tokenizer):
    """Eval mode, right padding and a pad token for the duration; everything restored afterwards."""
    was_training, side, pad = model.training, tokenizer.padding_side, tokenizer.pad_token
    model.eval()
    tokenizer.padding_side = "right"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        model.train(was_training)
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = pad


class BaseLogitsCache:
    """The base model's logits on the general text, batch by batch, kept for the next adapter while they fit in
    `budget_bytes` (beyond that, recomputed). Reuse is exact: a disabled adapter runs the base layers alone, and a
    batch is reused only for identical token ids."""

    def __init__(self, budget_bytes: int = 1 << 30):
        self.budget_bytes, self.used_bytes = budget_bytes, 0
        self.batches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def logits(self, index: int, ids: torch.Tensor, compute) -> torch.Tensor:
        cached = self.batches.get(index)
        if cached is not None and torch.equal(cached[0], ids):
            return cached[1]
        logits = compute()
        size = logits.numel() * logits.element_size()
        if cached is None and self.used_bytes + size <= self.budget_bytes:
            self.batches[index] = (ids.clone(), logits)
            self.used_bytes += size
        return logits


@torch.no_grad()
def general_text_shift(model, tokenizer, texts: list[str], max_length: int = 256, batch_size: int = 4,
                       base_cache: BaseLogitsCache | None = None) -> dict:
    """How far the adapter moved the next-token distribution on `texts`, per predicted (non-padding) token:
    mean KL(p_base ‖ p_tuned), and perplexity with the adapter off and on. The base is the same peft model with
    its adapter disabled, batch by batch; `base_cache` keeps those logits for the next adapter when they fit."""
    if not texts:
        raise RecipeError("No general text to measure the output shift on.")
    device = _device(model)
    kl = nll_base = nll_tuned = 0.0
    tokens = 0
    with _scoring(model, tokenizer):
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                              truncation=True, max_length=max_length).to(device)
            ids, mask = batch["input_ids"], batch["attention_mask"].bool()
            keep = mask[:, :-1] & mask[:, 1:]  # position t predicts token t + 1; both must be real tokens
            targets = ids[:, 1:][keep]
            tuned_logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1][keep]

            def base_logits_of_batch():
                with _adapter_off(model):
                    return model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1][keep]

            cache = base_cache or BaseLogitsCache(budget_bytes=0)
            base_logits = cache.logits(start, ids, base_logits_of_batch)
            for first in range(0, targets.numel(), POSITIONS):
                part = slice(first, first + POSITIONS)
                log_base = torch.log_softmax(base_logits[part].double(), dim=-1)
                log_tuned = torch.log_softmax(tuned_logits[part].double(), dim=-1)
                # KL(p_b ‖ p_t) = Σ_v p_b(v) · (log p_b(v) − log p_t(v)), summed over positions here
                kl += (log_base.exp() * (log_base - log_tuned)).sum().item()
                picked = targets[part].unsqueeze(1)
                nll_base -= log_base.gather(1, picked).sum().item()
                nll_tuned -= log_tuned.gather(1, picked).sum().item()
            tokens += targets.numel()
    if tokens == 0:
        raise RecipeError("The general texts are too short: no token to predict (each needs at least two tokens).")
    # perplexity = exp(mean negative log-likelihood of the predicted tokens)
    base_ppl, tuned_ppl = math.exp(nll_base / tokens), math.exp(nll_tuned / tokens)
    return {"kl_base_tuned": kl / tokens, "perplexity_base": base_ppl, "perplexity_tuned": tuned_ppl,
            "perplexity_change": tuned_ppl - base_ppl, "tokens": tokens}


# ---- task metrics on the held-out split -------------------------------------------------------------------------


def _prompt_completion_ids(tokenizer, prompt, completion, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + completion, and where the completion starts; the prompt is cut from the left when
    the pair is longer than `max_length`."""
    if isinstance(prompt, str) and isinstance(completion, str):
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    elif isinstance(prompt, list) and isinstance(completion, list):
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        if not full_text.startswith(prompt_text):
            raise RecipeError("The chat template renders a prompt differently on its own than followed by its "
                              "answer, so the answer's tokens cannot be told apart; use a prefix-stable template.")
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        # the answer and its end-of-turn token; whitespace the template puts after the turn is not the model's answer
        completion_ids = tokenizer(full_text[len(prompt_text):].rstrip(), add_special_tokens=False)["input_ids"]
    else:
        raise RecipeError("Preference rows need `prompt` and `chosen`/`rejected` both as strings or both as lists "
                          f"of messages, got {type(prompt).__name__} and {type(completion).__name__}.")
    completion_ids = completion_ids[:max(max_length - 1, 1)]
    prompt_ids = prompt_ids[-max(max_length - len(completion_ids), 1):] if prompt_ids else []
    return prompt_ids + completion_ids, max(len(prompt_ids), 1)


@torch.no_grad()
def _completion_logps(model, tokenizer, sequences: list[tuple[list[int], int]], batch_size: int = 4) -> torch.Tensor:
    """log p(completion | prompt) = Σ over completion tokens of log p(token | everything before it), float64."""
    device = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    totals = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size]
        longest = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), longest), pad, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, (tokens, _) in enumerate(batch):
            ids[row, :len(tokens)] = torch.tensor(tokens, device=device)
            mask[row, :len(tokens)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits
        for row, (tokens, first) in enumerate(batch):
            log_probs = torch.log_softmax(logits[row, first - 1:len(tokens) - 1].double(), dim=-1)
            totals.append(log_probs.gather(1, ids[row, first:len(tokens)].unsqueeze(1)).sum())
    return torch.stack(totals).cpu()


def preference_metrics(model, tokenizer, rows, max_length: int = 256, batch_size: int = 4) -> dict:
    """DPO-style implicit rewards (β = 1) of the tuned model against the base on preference pairs."""
    chosen = [_prompt_completion_ids(tokenizer, r["prompt"], r["chosen"], max_length) for r in rows]
    rejected = [_prompt_completion_ids(tokenizer, r["prompt"], r["rejected"], max_length) for r in rows]
    with _scoring(model, tokenizer):
        tuned_c = _completion_logps(model, tokenizer, chosen, batch_size)
        tuned_r = _completion_logps(model, tokenizer, rejected, batch_size)
        with _adapter_off(model):
            base_c = _completion_logps(model, tokenizer, chosen, batch_size)
            base_r = _completion_logps(model, tokenizer, rejected, batch_size)
    # implicit reward r(x, y) = log p_tuned(y|x) − log p_base(y|x); margin = r(x, chosen) − r(x, rejected)
    margins = (tuned_c - base_c) - (tuned_r - base_r)
    return {"task": "preference", "samples": len(chosen),
            "preference_accuracy": (margins > 0).double().mean().item(), "reward_margin": margins.mean().item(),
            "chosen_preferred_base": (base_c > base_r).double().mean().item(),
            "chosen_preferred_tuned": (tuned_c > tuned_r).double().mean().item()}


def answer_nll(model, tokenizer, rows, max_length: int = 256, batch_size: int = 4) -> dict:
    """Mean negative log-likelihood per token of the reference answers (the last assistant turn of each
    conversation) given their prompts, with the adapter off and on: a task measure that does not saturate."""
    sequences = [_prompt_completion_ids(tokenizer, m[:-1], m[-1:], max_length) for m in rows["messages"]
                 if m and m[-1]["role"] == "assistant"]
    if not sequences:
        return {}
    tokens = sum(len(ids) - first for ids, first in sequences)
    with _scoring(model, tokenizer):
        tuned = _completion_logps(model, tokenizer, sequences, batch_size).sum().item()
        with _adapter_off(model):
            base = _completion_logps(model, tokenizer, sequences, batch_size).sum().item()
    # NLL per answer token = −Σ log p(answer token | prompt, earlier answer tokens) / number of answer tokens
    return {"answer_nll_base": -base / tokens, "answer_nll_tuned": -tuned / tokens}


def _task_kind(columns) -> str:
    if all(c in columns for c in SFT_COLUMNS):
        return "sft"
    if all(c in columns for c in DPO_COLUMNS):
        return "preference"
    raise RecipeError(f"Cannot score a task on columns {list(columns)}: need {list(SFT_COLUMNS)} (SFT) or "
                      f"{list(DPO_COLUMNS)} (preference pairs).")


def task_metrics(model, tokenizer, test_dataset, n: int, max_length: int = 256) -> dict:
    """The first `n` held-out rows: exact match of the greedy answer with the adapter off and on (SFT data,
    column `messages`), or preference accuracy and reward margin (columns prompt / chosen / rejected)."""
    rows = test_dataset.select(range(min(n, len(test_dataset))))
    if len(rows) == 0:
        raise RecipeError("No held-out rows to score the task on.")
    if _task_kind(test_dataset.column_names) == "sft":
        tuned = exact_match(model, tokenizer, rows)
        with _adapter_off(model):
            base = exact_match(model, tokenizer, rows)
        return {"task": "exact_match", "samples": len(rows), "exact_match_base": base, "exact_match_tuned": tuned,
                **answer_nll(model, tokenizer, rows, max_length=max_length)}
    return preference_metrics(model, tokenizer, rows, max_length=max_length)


# ---- one adapter, and several on one base -----------------------------------------------------------------------


def adapter_parameter_count(model: nn.Module, adapter_name: str = "default") -> int:
    """Number of the adapter's own weights (tuner-layer tensors and modules_to_save), frozen buffers excluded."""
    seen, total = set(), 0
    for module in model.modules():
        tensors = []
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names:
                container = getattr(module, attr, None)
                if container is not None and adapter_name in container:
                    item = container[adapter_name]
                    tensors += list(item.parameters()) if isinstance(item, nn.Module) else [item]
        elif isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            tensors += list(module.modules_to_save[adapter_name].parameters())
        for tensor in tensors:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel()
    return total


def strict_orthogonality_error(model, adapter_name: str = "default") -> float | None:
    """max |RᵀR − I| of a strict Givens adapter; None for adapters that are not exactly orthogonal by design."""
    config = model.peft_config[adapter_name]
    if isinstance(config, GivensConfig) and config.is_orthogonal:
        return orthogonality_error(model, adapter_name)
    return None


def _method_label(config) -> str:
    method = str(getattr(config.peft_type, "value", config.peft_type)).lower()
    if isinstance(config, GivensConfig):
        variant = [v for v, on in (("qGOFT", config.quasi), ("GOFT*", config.scaling)) if on] or ["strict"]
        return f"{method} ({' + '.join(variant)})"
    return method


def read_adapter_config(adapter_path) -> dict:
    """adapter_config.json of an adapter folder, with clear errors for a missing folder or file."""
    folder = Path(adapter_path).expanduser()
    if not folder.exists():
        raise RecipeError(f"The adapter folder {str(adapter_path)!r} does not exist.")
    if not folder.is_dir():
        raise RecipeError(f"{str(adapter_path)!r} is a file, not an adapter folder.")
    config_file = folder / ADAPTER_CONFIG_FILE
    if not config_file.is_file():
        raise RecipeError(f"{str(adapter_path)!r} is not an adapter folder: it has no {ADAPTER_CONFIG_FILE}.")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise RecipeError(f"{config_file} is not valid JSON: {error.msg} (line {error.lineno}).") from None
    if not isinstance(config, dict):
        raise RecipeError(f"{config_file} does not hold a JSON object.")
    return config


def evaluate_adapter(base_model, tokenizer, adapter_path, *, texts: list[str], test_dataset=None,
                     task_samples: int = 0, max_length: int = 256,
                     base_cache: BaseLogitsCache | None = None) -> dict:
    """Load the adapter onto `base_model`, measure it, and unload it again: `base_model` comes back unchanged,
    ready for the next adapter. The task metric needs `test_dataset` and `task_samples` > 0."""
    read_adapter_config(adapter_path)
    was_training = base_model.training
    try:
        model = PeftModel.from_pretrained(base_model, str(Path(adapter_path).expanduser()))
    except (RuntimeError, KeyError, ValueError) as error:  # e.g. another architecture's modules or shapes
        raise RecipeError(f"The adapter {str(adapter_path)!r} does not fit the base model "
                          f"{base_model.name_or_path!r}: {error}") from None
    try:
        model.eval()
        name = model.active_adapter
        config = model.peft_config[name]
        angles = neuron_angle_changes(model)
        result = {"adapter": str(adapter_path), "method": str(getattr(config.peft_type, "value", config.peft_type)),
                  "label": _method_label(config), "base_model": config.base_model_name_or_path,
                  "trainable_parameters": adapter_parameter_count(model, name),
                  **general_text_shift(model, tokenizer, texts, max_length=max_length, base_cache=base_cache),
                  "orthogonality_error": strict_orthogonality_error(model, name),
                  "max_neuron_angle_change_deg": max(angles.values(), default=0.0),
                  "neuron_angle_change_deg_by_layer": angles, "task": None}
        if test_dataset is not None and task_samples > 0:
            result["task"] = task_metrics(model, tokenizer, test_dataset, task_samples, max_length=max_length)
    finally:
        model.unload()
        base_model.train(was_training)
    return result


def _run_record(adapter_path) -> dict | None:
    """The `data` record a finished recipe run wrote next to its adapter, or None."""
    marker = Path(adapter_path).expanduser() / FINISHED_MARKER
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text()).get("data")
    except (json.JSONDecodeError, AttributeError):
        raise RecipeError(f"{marker} is not a valid run record (a JSON object).") from None
    if record is not None and not (isinstance(record, dict) and record.get("dataset_name")):
        raise RecipeError(f"The `data` record in {marker} names no `dataset_name`.")
    return record


def held_out_split(adapter_path, dataset_name: str | None = None):
    """The held-out rows to score `adapter_path` on: `dataset_name`'s test split when given (carved with the
    recipe defaults when it has none), else the split its run made, rebuilt from goft_run.json; None when neither."""
    if dataset_name:
        args, seed = DataArguments(dataset_name=dataset_name), DEFAULT_SEED
    else:
        record = _run_record(adapter_path)
        if record is None:
            return None
        args = DataArguments(dataset_name=record["dataset_name"], dataset_config=record.get("dataset_config"),
                             dataset_train_split=record.get("dataset_train_split", "train"),
                             dataset_test_split=record.get("dataset_test_split", "test"),
                             dataset_test_size=record.get("dataset_test_size", 0.1))
        seed = record.get("seed", DEFAULT_SEED)
    dataset = load_recipe_dataset(args, (), seed=seed)
    test = dataset[args.dataset_test_split]
    _task_kind(test.column_names)
    return test


@dataclasses.dataclass
class _Plan:
    source: object
    texts: list[str]
    adapters: list[str]
    test_splits: list


def _plan(adapter_paths, base_model_name, general_text_path, task_samples, dataset_name) -> _Plan:
    """Every check that needs no model: adapter folders, one shared base, general text, held-out splits."""
    if not adapter_paths:
        raise RecipeError("Name at least one adapter folder to evaluate (`--adapters runs/a runs/b`).")
    bases = {}
    for path in adapter_paths:
        base = read_adapter_config(path).get("base_model_name_or_path")
        if base:
            local = os.path.expanduser(base)
            bases[str(path)] = os.path.abspath(local) if os.path.exists(local) else base  # one spelling per folder
        elif not base_model_name:
            raise RecipeError(f"The adapter {str(path)!r} does not name its base model (`base_model_name_or_path` "
                              "in adapter_config.json); pass `--base_model`.")
    if len(set(bases.values())) > 1:
        listing = ", ".join(f"{path} -> {base}" for path, base in bases.items())
        raise RecipeError(f"The adapters were trained on different base models ({listing}); evaluate the adapters "
                          "of each base separately.")
    texts = load_general_text(general_text_path)
    tests = [held_out_split(p, dataset_name) if task_samples > 0 else None for p in adapter_paths]
    for path, test in zip(adapter_paths, tests):
        if test is None and task_samples > 0:
            logger.warning("%s has no %s with its data record: its task metric is skipped (give `dataset_name` to "
                           "score it).", path, FINISHED_MARKER)
    source = resolve_model_source(base_model_name or next(iter(bases.values())))
    check_adapters_fit(source, [Path(p).expanduser() for p in adapter_paths])
    return _Plan(source=source, texts=texts, adapters=[str(p) for p in adapter_paths], test_splits=tests)


def evaluate_adapters(adapter_paths, base_model_name: str | None = None, general_text_path=DEFAULT_GENERAL_TEXT,
                      task_samples: int = 40, max_length: int = 256, dataset_name: str | None = None,
                      dtype: str | None = "float32") -> list[dict]:
    """Evaluate adapters trained on one base: the base (default: the adapters' `base_model_name_or_path`) is
    loaded once, and each adapter is loaded onto it, measured (see `evaluate_adapter`) and unloaded.

    Each adapter's task metric uses its run's held-out split (rebuilt from goft_run.json), or `dataset_name`'s test
    split for all of them when given. Bad input is refused before any model is loaded."""
    plan = _plan(list(adapter_paths), base_model_name, general_text_path, task_samples, dataset_name)
    model = load_causal_lm(plan.source, dtype=dtype)
    base_cache = BaseLogitsCache()  # the base's general-text logits, computed once for all adapters when they fit
    results = []
    for path, test in zip(plan.adapters, plan.test_splits):
        tokenizer = load_tokenizer(dataclasses.replace(plan.source, adapter_path=str(Path(path).expanduser())))
        results.append(evaluate_adapter(model, tokenizer, path, texts=plan.texts, test_dataset=test,
                                        task_samples=task_samples, max_length=max_length, base_cache=base_cache))
    return results
