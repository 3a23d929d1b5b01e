"""Whether an adapter fits a base model, checked on the model's structure alone, before any weight is loaded.

The base model is built as a skeleton on the meta device from its config alone (no weights, no memory), and the
adapter is injected into it: target layers that do not exist, layers an adapter cannot fit, and a saved adapter of
the wrong shape are all caught in about a second, with the layers that do exist listed. Training checks a fresh
adapter here; evaluation and the comparison check saved adapters folders.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from peft import PeftConfig, get_peft_model
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils import get_peft_model_state_dict
from peft.utils.error import NoMatchingPeftModuleError
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from goft.errors import RecipeError
from goft.io.model_source import ADAPTER_WEIGHTS_FILE, ModelSource
from goft.tuners.givens.layer import is_linear, layer_features


def load_model_config(source: ModelSource, revision: str = "main", trust_remote_code: bool = False):
    """The base model's config (from its folder, the Hub cache or its GGUF header); custom code only when trusted."""
    try:
        return AutoConfig.from_pretrained(
            source.path, gguf_file=source.gguf_file, revision=revision, trust_remote_code=trust_remote_code
        )
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise RecipeError(
                f"The model {source.name!r} ships its own Python code (`auto_map` in its config.json), "
                "and goft runs such code only when the recipe sets `trust_remote_code: true`. Read "
                "that code first, then set the key."
            ) from None
        raise RecipeError(f"Cannot read the configuration of the model {source.name!r}: {error}") from None
    except OSError as error:
        raise RecipeError(f"Cannot read the configuration of the model {source.name!r}: {error}") from None


def build_skeleton(config, source: ModelSource, trust_remote_code: bool = False) -> nn.Module:
    """The causal LM on the meta device: its module tree and shapes, without weights (and without DeepSpeed's
    ZeRO-3 init, which `from_config` would enter)."""
    auto_map = getattr(config, "auto_map", None) or {}
    if trust_remote_code and "AutoModelForCausalLM" in auto_map:
        model_class = get_class_from_dynamic_module(auto_map["AutoModelForCausalLM"], source.path)
    else:
        try:
            model_class = AutoModelForCausalLM._model_mapping[type(config)]
        except KeyError:
            raise RecipeError(
                f"The model {source.name!r} (model_type {config.model_type!r}) is not a causal "
                "language model that transformers knows."
            ) from None
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model_class(config)


def _embedding_modules(model: nn.Module) -> dict[str, str]:
    """Module name -> "output layer" or "embedding": the layers no adapter of a recipe may target."""
    found = {}
    try:
        output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        output = inputs = None
    for name, module in model.named_modules():
        if output is not None and module is output:
            found[name] = "output layer"
        elif module is inputs or isinstance(module, nn.Embedding):
            found[name] = "embedding"
    return found


def describe_linear_layers(model: nn.Module, limit: int = 24) -> str:
    """The model's linear layers an adapter may target, grouped by their last name: ``q_proj 48→48 (×2)``, in model
    order (the output layer and embeddings are left out)."""
    excluded = _embedding_modules(model)
    groups: OrderedDict[tuple, int] = OrderedDict()
    for name, module in model.named_modules():
        if name in excluded:
            continue
        if not is_linear(module):
            continue
        in_features, out_features = layer_features(module)
        key = (name.rsplit(".", 1)[-1], in_features, out_features)
        groups[key] = groups.get(key, 0) + 1
    parts = [
        f"{leaf} {n_in}→{n_out}" + (f" (×{count})" if count > 1 else "")
        for (leaf, n_in, n_out), count in groups.items()
    ]
    if len(parts) > limit:
        parts = parts[:limit] + [f"… {len(parts) - limit} more"]
    return ", ".join(parts) or "none"


def _inject(skeleton: nn.Module, adapter_config: PeftConfig):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(skeleton, copy.deepcopy(adapter_config))


def check_fresh_adapter(skeleton: nn.Module, adapter_config: PeftConfig, model_name: str, method: str) -> None:
    """The adapter's target modules exist in the model, spare its output layer (and its embeddings, but for LoRA),
    and every targeted layer suits the method."""
    layers = describe_linear_layers(skeleton)
    targets = adapter_config.target_modules  # None: peft's usual set for the model type, never these layers
    refused = [
        (name, kind)
        for name, kind in _embedding_modules(skeleton).items()
        if targets is not None
        and (kind == "output layer" or method != "lora")
        and check_target_module_exists(adapter_config, name)
    ]
    if refused:
        name, kind = refused[0]
        key = "`adapter_target_modules`" + (" (or `lora_target_modules`)" if method == "lora" else "")
        shown = sorted(targets) if isinstance(targets, (set, list)) else targets
        why = (
            "its weight gives the log-probabilities directly, so an adapter there would never train"
            if kind == "output layer"
            else f"the `{method}` adapter adapts linear layers only (LoRA can adapt embeddings)"
        )
        raise RecipeError(
            f"{key} {shown!r} select {name!r}, the model's {kind}: {why}. Leave it out; the layers "
            f"an adapter can target (in→out features) are: {layers}."
        )
    try:
        _inject(skeleton, adapter_config)
    except NoMatchingPeftModuleError:
        raise RecipeError(
            f"`adapter_target_modules` {adapter_config.target_modules!r} match no layer of "
            f"{model_name!r}. Its linear layers (in→out features) are: {layers}. Name some of "
            "these, give a regex, or use `all-linear`."
        ) from None
    except (ValueError, TypeError) as error:
        raise RecipeError(
            f"The `{method}` adapter cannot be applied to {model_name!r}: {error} Its linear layers "
            f"(in→out features) are: {layers}. Narrow `adapter_target_modules` or change the "
            "method's settings."
        ) from None


def _saved_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in a safetensors file; a truncated or damaged file is an error naming it."""
    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise RecipeError(
            f"{weights} is not a readable safetensors file ({error}): it is truncated or damaged, "
            "for example by a copy that did not finish. Copy or save the adapter again."
        ) from None


def check_weights_complete(weights: Path) -> None:
    """Every tensor the safetensors header announces lies within the file (a cut copy has a valid header)."""
    size = weights.stat().st_size
    try:
        with open(weights, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_size)) if 0 < header_size <= size - 8 else None
    except (OSError, ValueError):
        header = None
    ends = [entry["data_offsets"][1] for key, entry in (header or {}).items() if key != "__metadata__"]
    if header is None or 8 + header_size + max(ends, default=0) > size:
        raise RecipeError(
            f"{weights} is truncated or damaged: its header announces more data than the file's "
            f"{size} bytes hold. Copy or save the adapter again."
        )


def check_adapter_folder(skeleton: nn.Module, adapter: ModelSource, model_name: str) -> None:
    """A saved adapter (`resolve_adapter_source`) fits this base: safetensors weights, its target layers present,
    every tensor's shape equal."""
    adapter_path, config = adapter.adapter_path, adapter.adapter_config
    folder = Path(adapter_path)
    weights = folder / ADAPTER_WEIGHTS_FILE
    if not weights.is_file():
        others = sorted(p.name for p in folder.glob("adapter_model.*"))
        found = f"; it holds {others}" if others else ""
        raise RecipeError(
            f"The adapter folder {adapter_path!r} has no {ADAPTER_WEIGHTS_FILE}{found}. goft loads "
            "adapters only from safetensors (pickled .bin files can run code when loaded): re-save it "
            "with `save_pretrained(..., safe_serialization=True)`."
        )
    check_weights_complete(weights)
    model_type = getattr(getattr(skeleton, "config", None), "model_type", "?")
    try:
        model = _inject(skeleton, config)
    except NoMatchingPeftModuleError:
        raise RecipeError(
            f"The adapter in {adapter_path!r} does not fit the base {model_name!r} ({model_type}): "
            f"it adapts layers named {config.target_modules!r}, which this model does not have. Its "
            f"linear layers are: {describe_linear_layers(skeleton)}. Load the adapter onto the base "
            "it was trained on."
        ) from None
    expected = {key: tuple(value.shape) for key, value in get_peft_model_state_dict(model).items()}
    saved = _saved_shapes(weights)
    mismatched = [(key, saved[key], expected[key]) for key in saved if key in expected and saved[key] != expected[key]]
    if mismatched or not set(saved) & set(expected):
        shown = (
            "; ".join(
                f"{key}: {list(got)} in the adapter, {list(want)} for this base" for key, got, want in mismatched[:3]
            )
            or f"none of its {len(saved)} tensors has a place"
        )
        more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        raise RecipeError(
            f"The adapter in {adapter_path!r} does not fit the base {model_name!r} ({model_type}): "
            f"{shown}{more}. The base has a different width or architecture than the one the adapter "
            "was trained on; load it onto that base."
        )


def check_adapters_fit(
    base: ModelSource, adapters: list[ModelSource], revision: str = "main", trust_remote_code: bool = False
) -> None:
    """`check_adapter_folder` for each adapter against one base, whose config is read once."""
    config = load_model_config(base, revision, trust_remote_code)
    for adapter in adapters:
        check_adapter_folder(build_skeleton(config, base, trust_remote_code), adapter, base.name)
