"""The base model's greedy replies, computed once per base and prompt set and kept on disk for every later run.

Every run on one base asks the base the same questions: which retention questions it knows, its answers to the open
instructions, its answers to the held-out task rows. A reply depends only on the base's weights, the prompts' token
ids and how they are generated, so the generated token ids are stored under a content hash of all of that: the
weights themselves (every tensor of the base, adapters left out), the prompts as token ids, the number of new tokens,
the batch size and padding (batching changes float sums), the end and pad ids, the generation config, the device
type and the torch version. Any change gives another key; nothing stale can be read back. The ids are decoded with
the tokenizer of the run that reads them. A base sharded across processes (FSDP, DeepSpeed ZeRO-3) is asked every
time.

The folder is ``GOFT_REFERENCE_CACHE`` (``off`` turns the store off), else ``$XDG_CACHE_HOME/goft/base_replies``
(``~/.cache/goft/base_replies``). Entries are small JSON files, written atomically; deleting them is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from pathlib import Path

import torch
from torch import nn

from goft.evaluation.model_io import as_base, end_token_ids, greedy_reply_ids, model_device, rendered_prompts
from goft.io import cache_folders
from goft.tuners.sharded import DTensor

CACHE_ENV = "GOFT_REFERENCE_CACHE"
FORMAT = 1  # bumped whenever what an entry holds, or how its key is made, changes

_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → (tensor states, digest)


def cache_folder() -> Path | None:
    """Where entries are kept, or None when the store is off."""
    return cache_folders.cache_folder(CACHE_ENV, "base_replies")


def _base_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of the base under the name the bare base model gives it: a peft model's adapter tensors (paths
    naming an adapter) left out, its wrapping (``base_model.model.``, ``base_layer``) taken off the names."""
    adapters = set(getattr(model, "peft_config", {}) or {})
    wrapped = "base_model.model." if adapters and hasattr(model, "base_model") else ""
    tensors = []
    for name, tensor in model.state_dict(keep_vars=True).items():
        parts = name.removeprefix(wrapped).split(".")
        if not adapters.intersection(parts):
            tensors.append((".".join(part for part in parts if part != "base_layer"), tensor))
    return tensors


def _storable(model: nn.Module) -> bool:
    """Whether this process holds every tensor of the base whole (not sharded by FSDP or DeepSpeed ZeRO-3)."""
    return not any(
        isinstance(tensor, DTensor) or hasattr(tensor, "ds_id") or getattr(tensor, "_fsdp_flattened", False)
        for _, tensor in _base_tensors(model)
    )


def weights_fingerprint(model: nn.Module) -> str:
    """A content hash of the base's weights as the model holds them now (inside `as_base` for a peft model whose
    adapter is merged for scoring). Memoised while no tensor changed (same storage, same version counter)."""
    tensors = _base_tensors(model)
    states = tuple((name, t.data_ptr(), t._version if not t.is_inference() else -1) for name, t in tensors)
    known = _fingerprints.get(model)
    if known is not None and known[0] == states:
        return known[1]
    digest = hashlib.blake2b(digest_size=32)
    for name, tensor in tensors:
        data = tensor.detach()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    _fingerprints[model] = (states, digest.hexdigest())
    return _fingerprints[model][1]


def _key(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int) -> str:
    generation = getattr(model, "generation_config", None)
    parts = {
        "format": FORMAT,
        "weights": weights_fingerprint(model),
        "prompts": hashlib.sha256(json.dumps(prompt_ids).encode()).hexdigest(),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "end_ids": sorted(end_token_ids(model, tokenizer)),
        "pad_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        "generation_config": generation.to_json_string(use_diff=False) if generation is not None else None,
        "device": model_device(model).type,
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _read(path: Path, count: int) -> list[list[int]] | None:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or a torn or foreign file: computed again and rewritten
    ids = stored.get("generated") if isinstance(stored, dict) else None
    if not isinstance(ids, list) or len(ids) != count or not all(isinstance(row, list) for row in ids):
        return None
    return ids


def _write(path: Path, generated: list[list[int]]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps({"format": FORMAT, "generated": generated}))
        os.replace(partial, path)
    except OSError:
        pass  # a read-only or full disk costs the reuse, never the run


@torch.no_grad()
def base_replies(
    model, tokenizer, conversations: list, max_new_tokens: int, batch_size: int = 16
) -> list[tuple[str, bool]]:
    """(reply, finished) per conversation, as `greedy_replies` gives them, of the base of `model` (a peft model runs
    with its adapter off): read from the store when this base already answered these prompts this way."""
    with as_base(model):
        prompts = rendered_prompts(tokenizer, conversations)
        folder = cache_folder()
        path = None
        generated = None
        if folder is not None and _storable(model):
            plain = bool(prompts) and isinstance(conversations[0], str)
            prompt_ids = [tokenizer(p, add_special_tokens=plain)["input_ids"] for p in prompts]
            path = folder / f"{_key(model, tokenizer, prompt_ids, max_new_tokens, batch_size)}.json"
            generated = _read(path, len(prompts))
        if generated is None:
            generated = greedy_reply_ids(model, tokenizer, conversations, max_new_tokens, batch_size)
            if path is not None:
                _write(path, generated)
    ends = end_token_ids(model, tokenizer)
    return [(tokenizer.decode(ids, skip_special_tokens=True), bool(ids) and ids[-1] in ends) for ids in generated]


def base_answers_to(model, tokenizer, conversations: list, max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """The base's greedy reply to each conversation (see `base_replies`)."""
    return [reply for reply, _ in base_replies(model, tokenizer, conversations, max_new_tokens, batch_size)]
