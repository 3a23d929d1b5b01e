"""Merge a saved Givens (or any peft) adapter into its base model and write a standalone transformers model."""

from __future__ import annotations

import json
from pathlib import Path

from peft import PeftModel

from .layer import GivensLayer
from .training.models import ModelSource, load_causal_lm, load_tokenizer, resolve_model_source
from .training.preflight import check_adapters_fit

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _check_paths(adapter_path: Path, output_dir: Path, overwrite: bool) -> dict:
    config_file = adapter_path / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{adapter_path} is not an adapter directory: it has no adapter_config.json.")
    visible = [p for p in output_dir.iterdir() if not p.name.startswith(".")] if output_dir.is_dir() else []
    if visible and not overwrite:
        raise FileExistsError(
            f"Output directory {output_dir} exists and is not empty; choose another or pass overwrite_output_dir."
        )
    if output_dir.resolve() == adapter_path.resolve():
        raise ValueError("The merged model must not be written into the adapter directory it is read from.")
    return json.loads(config_file.read_text())


def check_merge_inputs(adapter_path: str | Path, output_dir: str | Path, base_model: str | None = None,
                       dtype: str = "auto", overwrite_output_dir: bool = False) -> ModelSource:
    """Everything a merge needs that can be checked without weights: the dtype, the adapter folder, a free output
    folder, the base model, and the adapter's fit to it (on a weightless skeleton). Returns the base's source."""
    adapter_path, output_dir = Path(adapter_path), Path(output_dir)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}.")
    adapter_config = _check_paths(adapter_path, output_dir, overwrite_output_dir)
    base_model = base_model or adapter_config.get("base_model_name_or_path")
    if not base_model:
        raise ValueError(f"{adapter_path}/adapter_config.json names no base model; pass base_model explicitly.")
    source = resolve_model_source(base_model)
    check_adapters_fit(source, [adapter_path])  # a clear error before loading, when the adapter has other shapes
    return source


def merge_adapter_to_model(
    adapter_path: str | Path,
    output_dir: str | Path,
    base_model: str | None = None,
    dtype: str = "auto",
    overwrite_output_dir: bool = False,
) -> Path:
    """Load ``base_model`` (default: the adapter's ``base_model_name_or_path``), apply and merge the adapter, save.

    The merge is checked: non-finite weights abort it (``safe_merge``) and nothing is written then.
    """
    source = check_merge_inputs(adapter_path, output_dir, base_model, dtype, overwrite_output_dir)
    adapter_path, output_dir = Path(adapter_path), Path(output_dir)
    model = load_causal_lm(source, dtype=dtype)
    merged = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload(safe_merge=True)
    if any(isinstance(m, GivensLayer) for m in merged.modules()):
        raise RuntimeError("Merging left adapter layers in the model; nothing was written.")
    output_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output_dir)
    try:
        tokenizer = load_tokenizer(ModelSource(**{**vars(source), "adapter_path": str(adapter_path)}))
        tokenizer.save_pretrained(output_dir)
    except (OSError, ValueError, TypeError):
        pass  # a model without a usable tokenizer is still a valid merged model
    return output_dir
