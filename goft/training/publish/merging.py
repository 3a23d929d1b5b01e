"""Merging a saved adapter (Givens or any peft method) into its base model: a standalone transformers model."""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path

from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer

from goft.errors import RecipeError
from goft.io.adapter_checks import check_adapters_fit
from goft.io.model_source import ModelSource, load_causal_lm, load_tokenizer, resolve_adapter_source
from goft.io.outputs import check_output_location, refuse_finished_output

DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_merge_inputs(
    adapter_path, output_dir, base_model: str | None = None, dtype: str = "auto", overwrite_output_dir: bool = False
) -> ModelSource:
    """Everything a merge needs that can be checked without weights: the dtype, the adapter folder and its base, an
    output folder that is free and overlaps neither, and the adapter's fit to the base (on a weightless skeleton).
    Returns the adapter's source (`resolve_adapter_source`)."""
    if dtype not in DTYPES:
        raise RecipeError(f"`dtype` must be one of {list(DTYPES)}, got {dtype!r}.")
    adapter = resolve_adapter_source(adapter_path, base_model, base_key="--base_model")
    check_output_location(output_dir, {"adapter folder": adapter.adapter_path, "base model folder": adapter.path})
    refuse_finished_output(
        output_dir,
        None,
        "files (it is not empty) that the merged model could overwrite",
        overwrite_output_dir,
        overwrite_does="write into it anyway",
    )
    base = replace(adapter, adapter_path=None, adapter_config=None)
    check_adapters_fit(base, [adapter])  # a clear error before loading, when the adapter has other shapes
    return adapter


def merge_adapter(adapter: ModelSource, output_dir, dtype: str = "auto") -> Path:
    """Load the base of `adapter` (a checked source, see `check_merge_inputs`), apply and merge the adapter, save the
    model and the tokenizer. Non-finite merged weights abort the merge (`safe_merge`) and nothing is written then."""
    output_dir = Path(os.path.expanduser(str(output_dir)))
    model = load_causal_lm(adapter, dtype=dtype)
    merged = PeftModel.from_pretrained(model, adapter.adapter_path).merge_and_unload(safe_merge=True)
    if any(isinstance(module, BaseTunerLayer) for module in merged.modules()):
        raise RuntimeError("Merging left adapter layers in the model; nothing was written.")
    output_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output_dir)
    with contextlib.suppress(OSError, ValueError, TypeError):  # without a usable tokenizer, still a valid model
        load_tokenizer(adapter).save_pretrained(output_dir)
    return output_dir


def merge_adapter_to_model(
    adapter_path, output_dir, base_model: str | None = None, dtype: str = "auto", overwrite_output_dir: bool = False
) -> Path:
    """Check, then merge (see `check_merge_inputs` and `merge_adapter`): ``base_model`` defaults to the adapter's
    ``base_model_name_or_path``."""
    adapter = check_merge_inputs(adapter_path, output_dir, base_model, dtype, overwrite_output_dir)
    return merge_adapter(adapter, output_dir, dtype)
