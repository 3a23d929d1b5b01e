"""GGUF models dequantized once and kept: the float32 weights, config and tokenizer that transformers makes from a
local GGUF file, saved as an ordinary model folder and loaded from there by every later process.

Reading a GGUF file means dequantizing every tensor and rebuilding the tokenizer from its vocabulary: about 13 s for
the embedded SmolLM2-135M on two CPU cores, paid by every recipe, evaluation and comparison process, while loading
the saved folder takes well under a second. The folder holds exactly what the GGUF load gives (the same tensors bit
for bit, the same config, generation config, chat template and token ids; tested), under a key made of the GGUF
file's sha256 and the versions of transformers and gguf that convert it: another file or another converter gives
another folder, so nothing stale is read.

The folders live in ``GOFT_DEQUANTIZED_CACHE`` (``off`` turns the store off), else
``$XDG_CACHE_HOME/goft/dequantized`` (``~/.cache/goft/dequantized``); each takes the float32 model's size on disk
(540 MB for SmolLM2-135M). A folder is written under a temporary name and renamed when complete, so processes that
start together never read half a folder; deleting the store is always safe. A GGUF file named by Hub id, not a local
file, is loaded by transformers as before.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from goft.io import cache_folders

logger = logging.getLogger(__name__)

CACHE_ENV = "GOFT_DEQUANTIZED_CACHE"
FORMAT = 1  # bumped whenever what a folder holds, or how its key is made, changes
COMPLETE_FILE = "goft_dequantized.json"  # written last: a folder without it is never read

_digests: dict[tuple, str] = {}  # (path, size, mtime) → sha256, so that one process hashes a file once


def cache_folder() -> Path | None:
    """Where the dequantized folders are kept, or None when the store is off."""
    return cache_folders.cache_folder(CACHE_ENV, "dequantized")


def _file_sha256(path: str) -> str:
    stat = os.stat(path)
    memo = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
        _digests[memo] = digest.hexdigest()
    return _digests[memo]


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def key_parts(gguf_path: str) -> dict:
    """What a dequantized folder depends on: the GGUF file's bytes and the code that converts them."""
    return {
        "format": FORMAT,
        "gguf_sha256": _file_sha256(gguf_path),
        "transformers": _version("transformers"),
        "gguf": _version("gguf"),
    }


def forget_gguf_quantization(model) -> None:
    """GGUF weights are dequantized on load, but the model still claims to be quantized, which makes training
    and `save_pretrained` refuse it: drop those leftovers."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.__dict__.pop("quantization_method", None)


def dequantized_folder(folder: str, gguf_file: str) -> str | None:
    """The kept model folder of the local GGUF file `folder/gguf_file`, made on first use; None when the store is off,
    the file is not local, or the folder cannot be written (then the caller reads the GGUF file itself)."""
    root = cache_folder()
    gguf_path = os.path.join(folder, gguf_file)
    if root is None or not os.path.isfile(gguf_path):
        return None
    parts = key_parts(gguf_path)
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
    target = root / key
    if _complete(target, parts):
        return str(target)
    try:
        root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".partial", dir=root))
    except OSError as error:
        logger.warning("Cannot keep the dequantized %s in %s (%s); reading the GGUF file.", gguf_file, root, error)
        return None
    try:
        _write(partial, folder, gguf_file, parts)
        if target.exists() and not _complete(target, parts):  # damaged by hand: folders only appear complete
            shutil.rmtree(target)
        try:
            os.replace(partial, target)  # another process may have finished first: its folder is as good
        except OSError:
            if not _complete(target, parts):
                raise
    except OSError as error:
        logger.warning("Cannot keep the dequantized %s in %s (%s); reading the GGUF file.", gguf_file, root, error)
        return None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return str(target)


def _complete(target: Path, parts: dict) -> bool:
    try:
        return json.loads((target / COMPLETE_FILE).read_text()) == parts
    except (OSError, json.JSONDecodeError):
        return False


def _write(partial: Path, folder: str, gguf_file: str, parts: dict) -> None:
    logger.info("Dequantizing %s once; later loads read the kept copy.", gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    forget_gguf_quantization(model)
    model.save_pretrained(partial)
    del model
    AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file).save_pretrained(partial)
    (partial / COMPLETE_FILE).write_text(json.dumps(parts, sort_keys=True))
