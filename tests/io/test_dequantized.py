"""The kept dequantized copies of GGUF models: made once, read back bit for bit, never stale, never half-written."""

import json
import logging

import pytest
import torch

from goft.io import dequantized
from goft.io.dequantized import CACHE_ENV, COMPLETE_FILE, dequantized_folder


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "store"
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


@pytest.fixture
def gguf(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"GGUF" + bytes(range(200)))
    return folder


@pytest.fixture
def writes(monkeypatch):
    """Replaces the dequantization by a stand-in that records each call and writes a marker file."""
    calls = []

    def fake_write(partial, folder, gguf_file, parts):
        calls.append(parts["gguf_sha256"])
        (partial / "config.json").write_text("{}")
        (partial / COMPLETE_FILE).write_text(json.dumps(parts, sort_keys=True))

    monkeypatch.setattr(dequantized, "_write", fake_write)
    return calls


def test_made_once_then_read_back(store, gguf, writes):
    first = dequantized_folder(str(gguf), "m.gguf")
    second = dequantized_folder(str(gguf), "m.gguf")
    assert first == second and first.startswith(str(store))
    assert len(writes) == 1
    assert not [p for p in store.iterdir() if p.name.endswith(".partial")]


def test_other_bytes_or_converter_give_another_folder(store, gguf, writes, monkeypatch):
    first = dequantized_folder(str(gguf), "m.gguf")
    (gguf / "m.gguf").write_bytes(b"GGUF" + bytes(range(201)))
    second = dequantized_folder(str(gguf), "m.gguf")
    monkeypatch.setattr(dequantized, "_version", lambda name: "0.0-other")
    third = dequantized_folder(str(gguf), "m.gguf")
    assert len({first, second, third}) == 3 and len(writes) == 3


def test_a_folder_without_its_completion_record_is_never_read(store, gguf, writes):
    folder = dequantized_folder(str(gguf), "m.gguf")
    (store / folder.rsplit("/", 1)[1] / COMPLETE_FILE).unlink()  # as a process killed mid-write leaves it
    assert dequantized_folder(str(gguf), "m.gguf") == folder
    assert len(writes) == 2


def test_off_or_not_a_local_file(gguf, writes, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "off")
    assert dequantized_folder(str(gguf), "m.gguf") is None
    monkeypatch.setenv(CACHE_ENV, str(gguf.parent / "store"))
    assert dequantized_folder("org/name", "m.gguf") is None  # a Hub id: transformers reads it
    assert writes == []


def test_an_unwritable_store_falls_back_with_a_warning(tmp_path, gguf, writes, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "store"))
    with caplog.at_level(logging.WARNING, logger="goft.io.dequantized"):
        assert dequantized_folder(str(gguf), "m.gguf") is None
    assert "reading the GGUF file" in caplog.text


def test_a_failed_write_leaves_nothing_behind(store, gguf, monkeypatch, caplog):
    def failing_write(partial, folder, gguf_file, parts):
        (partial / "model.safetensors").write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(dequantized, "_write", failing_write)
    with caplog.at_level(logging.WARNING, logger="goft.io.dequantized"):
        assert dequantized_folder(str(gguf), "m.gguf") is None
    assert "No space left on device" in caplog.text
    assert list(store.iterdir()) == []


def test_a_folder_finished_first_by_another_process_is_used(store, gguf, monkeypatch):
    key_folder = {}

    def write_while_another_finishes(partial, folder, gguf_file, parts):
        (partial / COMPLETE_FILE).write_text(json.dumps(parts, sort_keys=True))
        other = store / key_folder["name"]  # the other process renames its complete folder into place first
        other.mkdir()
        (other / "config.json").write_text('{"by": "other"}')
        (other / COMPLETE_FILE).write_text(json.dumps(parts, sort_keys=True))

    import hashlib

    parts = dequantized.key_parts(str(gguf / "m.gguf"))
    key_folder["name"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
    monkeypatch.setattr(dequantized, "_write", write_while_another_finishes)
    folder = dequantized_folder(str(gguf), "m.gguf")
    assert json.loads((store / key_folder["name"] / "config.json").read_text()) == {"by": "other"}
    assert folder == str(store / key_folder["name"])
    assert not [p for p in store.iterdir() if p.name.endswith(".partial")]


@pytest.mark.slow
def test_the_embedded_model_from_its_kept_copy_is_the_gguf_load(store, monkeypatch):
    """Bit for bit: every tensor, the config, the generation config, the tokenizer's ids and chat template; and a
    second load reads the copy without dequantizing again."""
    from goft.io.model_source import load_causal_lm, load_tokenizer, resolve_model_source

    source = resolve_model_source("smollm2-135m-instruct")
    kept_model, kept_tokenizer = load_causal_lm(source, dtype="float32"), load_tokenizer(source)
    monkeypatch.setattr(dequantized, "_write", lambda *args: pytest.fail("dequantized twice"))
    again = load_causal_lm(source, dtype="bfloat16")
    monkeypatch.setenv(CACHE_ENV, "off")
    direct_model, direct_tokenizer = load_causal_lm(source, dtype="float32"), load_tokenizer(source)

    assert kept_model.name_or_path == direct_model.name_or_path == "smollm2-135m-instruct"
    kept_state, direct_state = kept_model.state_dict(), direct_model.state_dict()
    assert kept_state.keys() == direct_state.keys()
    for name, tensor in direct_state.items():
        assert kept_state[name].dtype == tensor.dtype and torch.equal(kept_state[name], tensor), name
    assert torch.equal(
        again.model.layers[2].mlp.down_proj.weight, direct_model.model.layers[2].mlp.down_proj.weight.bfloat16()
    )
    kept_config, direct_config = kept_model.config.to_dict(), direct_model.config.to_dict()
    kept_config.pop("architectures")  # saving a model records it; loading a GGUF leaves it empty
    direct_config.pop("architectures")
    assert kept_config == direct_config
    assert kept_model.generation_config.to_dict() == direct_model.generation_config.to_dict()
    assert kept_tokenizer.chat_template == direct_tokenizer.chat_template
    assert kept_tokenizer.special_tokens_map == direct_tokenizer.special_tokens_map
    conversation = [{"role": "user", "content": "Name the capital of France, ünïcode 123."}]
    for text in ("Hello world <|im_start|>assistant\n", "  spaces\tand tabs\n\n", "ünïcode 東京 🙂"):
        assert kept_tokenizer(text)["input_ids"] == direct_tokenizer(text)["input_ids"]
    assert kept_tokenizer.apply_chat_template(conversation, add_generation_prompt=True) == (
        direct_tokenizer.apply_chat_template(conversation, add_generation_prompt=True)
    )
