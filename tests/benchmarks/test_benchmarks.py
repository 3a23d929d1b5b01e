"""The benchmarks measure what they say: saved bytes, parameter counts, ratios, and a real end-to-end run."""

import json

import pytest
import torch
import yaml

from benchmarks import gpu_check, layer_benchmark, sft_benchmark
from benchmarks.measure import interleaved_medians, peak_rss_bytes, reset_peak_rss, saved_bytes
from goft.rotation import backend as rotation_backend
from tests.support.data import sft_rows, write_jsonl
from tests.support.models import save_tiny_chat_model
from tests.support.triton_interpreter import exact_bfloat16_dot, kernel_device


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
    assert set(rows) == set(layer_benchmark.default_methods("cpu"))
    assert not set(rows) & {layer_benchmark.STRICT_TORCH, *layer_benchmark.KERNEL_BLOCK_METHODS}
    assert all(r["peak_step_bytes"] is None and r["peak_vs_lora"] is None for r in rows.values())  # CUDA only
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


def test_layer_benchmark_kernel_variants_need_a_gpu_or_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="need --device cuda"):
        layer_benchmark.LayerBenchmarkArguments(methods=["GOFT strict, kernel B=64"])
    assert layer_benchmark.default_methods("cuda") == [
        m for m in layer_benchmark.METHODS if m not in layer_benchmark.KERNEL_BLOCK_METHODS
    ]


def test_layer_benchmark_variants_compute_the_strict_layer(monkeypatch):
    """The forced PyTorch path and the fixed-block kernels compute what the GOFT layer computes."""
    monkeypatch.setenv("GOFT_ROTATION_KERNEL", "triton")  # the forced variant must not follow the environment
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    device = kernel_device()
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(24, 70, generator=gen) / 8).to(device)
    x = torch.randn(9, 70, generator=gen).to(device)
    angles = torch.randn(69, generator=gen).to(device)
    reference = layer_benchmark.METHODS[layer_benchmark.STRICT](weight)
    forced = layer_benchmark.METHODS[layer_benchmark.STRICT_TORCH](weight)
    for model in (reference, forced):
        next(p for p in model.parameters() if p.requires_grad).data.copy_(angles)
    with rotation_backend.use_backend("torch"):
        want = reference(x)
    assert torch.equal(forced(x), want)
    if device.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    for name, block in layer_benchmark.KERNEL_BLOCK_METHODS.items():
        kernel = layer_benchmark.METHODS[name](weight)
        kernel.angles.data.copy_(angles)
        assert kernel.block == block and torch.allclose(kernel(x), want, atol=1e-5), name


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


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(stages=["layer", "warp"]), "Unknown or no stages \\['warp'\\]"),
        (dict(device="tpu"), "cuda \\(or cpu for a dry run\\)"),
        (dict(layer_sizes=["4096"]), "DxT"),
        (dict(sft_recipe_args=["dtype"]), "key=value"),
        (dict(sft_config="nope.yaml"), "does not exist"),
    ],
)
def test_gpu_check_refuses_bad_arguments(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        gpu_check.GPUCheckArguments(**{"device": "cpu", "output_dir": str(tmp_path), **bad})


def test_gpu_check_needs_a_gpu_and_keeps_an_earlier_check(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        gpu_check.GPUCheckArguments(output_dir=str(tmp_path))
    (tmp_path / gpu_check.SUMMARY_FILE).write_text("{}")
    with pytest.raises(ValueError, match="holds an earlier check; pass --overwrite"):
        gpu_check.GPUCheckArguments(device="cpu", output_dir=str(tmp_path))
    gpu_check.GPUCheckArguments(device="cpu", output_dir=str(tmp_path), overwrite=True)


def test_gpu_check_runs_every_stage_even_after_a_failure(tmp_path, monkeypatch):
    ran = []

    def runners(args, out):
        def ok(name):
            return lambda: (
                ran.append(name) or {"targets": [{"target": f"{name} time", "ratio": 0.9, "limit": 1.0, "met": True}]}
            )

        def broken():
            ran.append("tests")
            raise RuntimeError("pytest -m cuda exited 1")

        return {"self_check": ok("self_check"), "tests": broken, "layer": ok("layer")}

    monkeypatch.setattr(gpu_check, "stage_runners", runners)
    args = gpu_check.GPUCheckArguments(device="cpu", output_dir=str(tmp_path), stages=["self_check", "tests", "layer"])
    summary = gpu_check.main(args)
    assert ran == ["self_check", "tests", "layer"]
    stages = summary["stages"]
    assert stages["self_check"]["ok"] and stages["layer"]["ok"] and not stages["tests"]["ok"]
    assert stages["tests"]["error"] == "RuntimeError: pytest -m cuda exited 1"
    assert json.loads((tmp_path / gpu_check.SUMMARY_FILE).read_text())["stages"]["tests"]["ok"] is False
    table = gpu_check.summary_table(stages)
    assert "| tests | FAILED |" in table and "|  | layer time | 0.900 (≤ 1.00) | yes |" in table


@pytest.mark.slow
@pytest.mark.skipif(
    torch.cuda.is_available(), reason="a GPU runs the check itself (the kernels compiled, not interpreted)"
)
def test_gpu_check_dry_run_on_cpu(tmp_path, monkeypatch):
    """Every stage of the GPU check on small shapes, the kernels through Triton's interpreter: one JSON per stage."""
    exact_bfloat16_dot(monkeypatch)
    monkeypatch.setattr(rotation_backend, "_self_checks", {})
    model = save_tiny_chat_model(tmp_path / "model")
    data = write_jsonl(sft_rows(48), tmp_path / "sft.jsonl")
    config = tmp_path / "sft.yaml"
    config.write_text(
        yaml.safe_dump({"model_name_or_path": str(model), "dataset_name": str(data), "adapter": "givens", "seed": 0})
    )
    out = tmp_path / "check"
    args = gpu_check.GPUCheckArguments(
        device="cpu",
        output_dir=str(out),
        layer_sizes=["64x32"],
        block_sweep_size="64x16",
        layer_repeats=1,
        sft_config=str(config),
        sft_batch_size=2,
        sft_max_length=32,
        sft_warmup_steps=1,
        sft_steps=1,
        sft_recipe_args=["dtype=float32"],
        sft_4bit_recipe_args=["dtype=float32", "load_in_4bit=true"],
        decode_model=str(model),
        decode_tokens=3,
        decode_repeats=1,
    )
    summary = gpu_check.main(args)
    failed = {name: stage["error"] for name, stage in summary["stages"].items() if not stage["ok"]}
    assert failed == {} and list(summary["stages"]) == list(gpu_check.STAGES)
    assert {p.name for p in out.iterdir()} >= {
        "gpu_check.json",
        "self_check.json",
        "cuda_tests.xml",
        "layer.json",
        "kernel_blocks.json",
        "decode_batch1.json",
        "decode_batch4.json",
        "sft.json",
        "sft_4bit.json",
    }
    layer = json.loads((out / "layer.json").read_text())
    assert {r["method"] for r in layer["results"]} == set(gpu_check.LAYER_METHODS) and layer["dtype"] == "bfloat16"
    blocks = json.loads((out / "kernel_blocks.json").read_text())
    assert {r["method"] for r in blocks["results"]} >= set(layer_benchmark.KERNEL_BLOCK_METHODS)
    assert "passed" in summary["stages"]["tests"]["result"]["pytest"]
    sft_4bit = json.loads((out / "sft_4bit.json").read_text())
    assert sft_4bit["recipe_args"] == ["dtype=float32", "load_in_4bit=true"]
    assert {r["method"] for r in sft_4bit["results"]} == {"givens", "lora"}


def test_decode_benchmark_rows_ratios_and_json(tmp_path):
    """Every adapter unmerged and merged beside the base, each generating exactly the asked tokens; ratios from
    the one run; the strict adapter also rebuilt at each call."""
    from benchmarks import decode_benchmark

    model = save_tiny_chat_model(tmp_path / "model")
    args = decode_benchmark.DecodeBenchmarkArguments(
        model=str(model), new_tokens=3, batch_size=2, repeats=1, warmup=0, output=str(tmp_path / "decode.json")
    )
    result = decode_benchmark.main(args)
    cases = {row["case"]: row for row in result["rows"]}
    expected = {"base", decode_benchmark.STRICT_REBUILT}
    expected |= {f"{name}, {state}" for name in decode_benchmark.ADAPTERS for state in ("unmerged", "merged")}
    assert set(cases) == expected
    assert cases["base"]["vs_base"] == 1.0 and cases[decode_benchmark.LORA_UNMERGED]["vs_lora_unmerged"] == 1.0
    assert result["targets"][0]["ratio"] == cases[decode_benchmark.STRICT_UNMERGED]["vs_lora_unmerged"]
    assert json.loads((tmp_path / "decode.json").read_text())["rows"] == result["rows"]
    with pytest.raises(ValueError, match="Unknown adapters"):
        decode_benchmark.DecodeBenchmarkArguments(adapters=["GOFT strict", "DoRA"])
    with pytest.raises(ValueError, match="batch_size"):
        decode_benchmark.DecodeBenchmarkArguments(batch_size=9)


def test_evaluation_benchmark_arguments_and_report():
    from benchmarks import evaluation_benchmark

    with pytest.raises(ValueError, match="Unknown workloads"):
        evaluation_benchmark.EvaluationBenchmarkArguments(workloads=["stage", "sweep"])
    with pytest.raises(ValueError, match="points"):
        evaluation_benchmark.EvaluationBenchmarkArguments(points=0)
    results = {
        "stage": {"baseline x": {"evaluation": 200.0}, "this checkout, empty store": {"evaluation": 50.0}},
        "point": {"baseline x": {"median_point": 300.0}, "this checkout, empty store": {"median_point": 150.0}},
    }
    table = evaluation_benchmark.report(results)
    assert "| stage | evaluation | this checkout, empty store | 50 | 4.00 |" in table
    assert "| point | median_point | this checkout, empty store | 150 | 2.00 |" in table
