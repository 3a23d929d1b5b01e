"""The benchmarks measure what they say: saved bytes, parameter counts, ratios, and a real end-to-end run."""

import json

import pytest
import torch
import yaml

from benchmarks import layer_benchmark, sft_benchmark
from benchmarks.measure import interleaved_medians, peak_rss_bytes, reset_peak_rss, saved_bytes

from .support.data import sft_rows, write_jsonl
from .support.models import save_tiny_chat_model


def test_saved_bytes_counts_each_storage_once_and_skips_excluded():
    weight = torch.randn(64, 32)
    x = torch.randn(10, 32, requires_grad=True)
    assert saved_bytes(lambda: torch.nn.functional.linear(x, weight), [weight]) == 0  # frozen Linear: weight only
    y = torch.randn(10, 32, requires_grad=True)
    assert saved_bytes(lambda: (x * y) * x) == 2 * x.numel() * 4 + (x * y).numel() * 4
    assert saved_bytes(lambda: x[:, :5] * x[:, 5:10]) == x.numel() * 4  # two views, one storage


def test_interleaved_medians_report_each_case():
    calls = []
    timings = interleaved_medians(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        repeats=3,
        warmup=1,
        device=torch.device("cpu"),
    )
    assert calls == ["a", "b"] * 4  # round by round, warm-up included
    assert set(timings) == {"a", "b"} and all(t["repeats"] == 3 for t in timings.values())


def test_peak_rss_can_be_reset():
    if not reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs here")
    before = peak_rss_bytes()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert peak_rss_bytes() >= before + 60 * 2**20
    del block


def test_layer_benchmark_rows_and_json(tmp_path):
    d, tokens = 256, 64
    args = layer_benchmark.LayerBenchmarkArguments(
        sizes=[f"{d}x{tokens}"],
        sweep_widths=[64, 128],
        sweep_tokens=16,
        repeats=1,
        sweep_repeats=1,
        warmup=0,
        output=str(tmp_path / "layer.json"),
    )
    results = layer_benchmark.main(args)
    assert json.loads((tmp_path / "layer.json").read_text())["results"] == results["results"]
    rows = {r["method"]: r for r in results["results"]}
    assert set(rows) == set(layer_benchmark.METHODS)
    params = {name: row["trainable_parameters"] for name, row in rows.items()}
    assert params["GOFT strict"] == params["GOFT plain autograd"] == d - 1
    assert params["GOFT quasi"] == 4 * (d - 1)
    assert params["LoRA r=16"] == 2 * 16 * d and params["frozen Linear"] == 0
    input_bytes = tokens * d * 4
    assert rows["frozen Linear"]["saved_bytes"] == 0
    assert input_bytes <= rows["GOFT strict"]["saved_bytes"] <= rows["LoRA r=16"]["saved_bytes"]
    assert rows["GOFT plain autograd"]["saved_bytes"] > 3 * input_bytes
    assert rows["LoRA r=16"]["time_vs_lora"] == 1.0
    assert [s["width"] for s in results["sweep"]] == [64, 128]
    saved_check = [c for c in results["targets"] if c["target"].startswith("saved bytes")]
    assert saved_check and all(c["met"] for c in saved_check)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(sizes=["4096"]), "DxT"),
        (dict(sizes=["1x10"]), "width >= 2"),
        (dict(methods=["GOFT turbo"]), "Unknown methods"),
        (dict(device="tpu"), "cpu or cuda"),
        (dict(dtype="float33"), "not a torch dtype"),
    ],
)
def test_layer_benchmark_refuses_bad_arguments(bad, message):
    with pytest.raises(ValueError, match=message):
        layer_benchmark.LayerBenchmarkArguments(**bad)


def test_sft_benchmark_summary_ratios():
    args = sft_benchmark.SFTBenchmarkArguments(methods=["givens", "lora"], steps=2, rounds=2)
    runs = [
        {
            "method": m,
            "checkpointing": c,
            "step_seconds": s,
            "tokens_per_step": [100, 100],
            "peak_bytes": p,
            "baseline_bytes": 0,
            "trainable_parameters": n,
            "device": {"device": "CPU: test"},
        }
        for m, c, s, p, n in [
            ("givens", "off", [1.0, 3.0], 110, 7),
            ("lora", "off", [2.0, 2.0], 100, 9),
            ("givens", "off", [2.0, 2.5], 105, 7),
            ("lora", "off", [2.0, 2.0], 100, 9),
            ("givens", "on", [3.0, 3.0], 55, 7),
            ("lora", "on", [3.0, 3.0], 60, 9),
        ]
    ]
    summary = sft_benchmark.summarize(args, runs)
    rows = {(r["method"], r["checkpointing"]): r for r in summary["results"]}
    givens = rows[("givens", "off")]
    assert givens["median_step_seconds"] == 2.25 and givens["time_vs_lora"] == pytest.approx(1.125)
    assert givens["memory_vs_lora"] == pytest.approx(1.10) and givens["tokens_per_second"] == pytest.approx(100 / 2.25)
    assert "time_vs_checkpointing_off" not in givens
    on = rows[("givens", "on")]  # compared with LoRA under checkpointing, and with itself without it
    assert on["time_vs_lora"] == pytest.approx(1.0) and on["memory_vs_lora"] == pytest.approx(55 / 60)
    assert on["time_vs_checkpointing_off"] == pytest.approx(3.0 / 2.25)
    assert on["memory_vs_checkpointing_off"] == pytest.approx(55 / 110)
    assert [c["met"] for c in summary["targets"]] == [False, False, True, True]


def test_sft_benchmark_refuses_an_unknown_checkpointing_setting():
    with pytest.raises(ValueError, match="checkpointing"):
        sft_benchmark.SFTBenchmarkArguments(checkpointing=["sometimes"])


def test_sft_benchmark_refuses_a_missing_recipe(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        sft_benchmark.SFTBenchmarkArguments(config=str(tmp_path / "nope.yaml"))


@pytest.mark.slow
def test_sft_benchmark_end_to_end_on_a_tiny_model(tmp_path):
    """Both methods train through the recipe machinery in their own processes and report real numbers."""
    model = save_tiny_chat_model(tmp_path / "model")
    data = write_jsonl(sft_rows(48), tmp_path / "sft.jsonl")
    config = tmp_path / "sft.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(model),
                "dataset_name": str(data),
                "dataset_test_size": 0.1,
                "adapter": "givens",
                "dtype": "float32",
                "adapter_target_modules": "all-linear",
                "learning_rate": 1e-3,
                "seed": 0,
            }
        )
    )
    args = sft_benchmark.SFTBenchmarkArguments(
        config=str(config),
        per_device_train_batch_size=2,
        max_length=32,
        warmup_steps=1,
        steps=2,
        rounds=1,
        output=str(tmp_path / "sft.json"),
    )
    summary = sft_benchmark.main(args)
    rows = {(r["method"], r["checkpointing"]): r for r in summary["results"]}
    assert set(rows) == {(m, c) for m in ("givens", "lora") for c in ("off", "on")}
    for row in rows.values():
        assert row["timed_steps"] == 2 and row["tokens_per_step"] == 2 * 32 and row["peak_bytes"] > 0
    assert all(rows[(m, "on")]["time_vs_checkpointing_off"] > 0 for m in ("givens", "lora"))
    # strict Givens: d − 1 angles per adapted layer (q, k, v, o, gate, up read 48 features, down reads 80)
    assert rows[("givens", "off")]["trainable_parameters"] == 2 * (6 * 47 + 79)
    assert json.loads((tmp_path / "sft.json").read_text())["results"] == summary["results"]


def test_retention_noise_rotations_are_seeded_orthogonal_and_of_the_asked_size(tmp_path):
    from transformers import AutoModelForCausalLM

    from benchmarks import retention_noise
    from goft.evaluation.weights import strict_orthogonality_error

    base = AutoModelForCausalLM.from_pretrained(save_tiny_chat_model(tmp_path / "tiny"))
    model = retention_noise.random_rotation(base, 0.01, seed=3)
    raw = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    assert raw.numel() > 500 and 0.008 < raw.std().item() < 0.012  # drawn from N(0, 0.01²)
    assert strict_orthogonality_error(model) < 1e-5  # random angles, still exactly orthogonal
    again = retention_noise.random_rotation(model.unload(), 0.01, seed=3)
    assert torch.equal(torch.cat([p.detach().flatten() for p in again.parameters() if p.requires_grad]), raw)
    assert not torch.equal(
        raw,
        torch.cat(
            [
                p.detach().flatten()
                for p in retention_noise.random_rotation(again.unload(), 0.01, seed=4).parameters()
                if p.requires_grad
            ]
        ),
    )
