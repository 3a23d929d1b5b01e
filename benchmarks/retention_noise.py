"""How many retention questions an untrained change of a given size flips: the noise floor of the retention share.

    python -m benchmarks.retention_noise [--scales 0.0005 0.001 0.002] [--seeds 0 1 2] [--output_dir DIR]

Every run puts a strict GOFT adapter (exactly orthogonal, every linear layer) with random angles on the embedded
SmolLM2-135M-Instruct: raw parameters drawn from N(0, scale²), so each angle is about π·scale. Nothing is learned,
so whatever such a rotation costs on the retention questions is chance: greedy answers of a small model that reach
the right phrase only late in a long sentence change path under any small change of the weights. Next to each
run's retention share the table gives its KL(base‖tuned) per token on the general text, so a trained adapter can
be read against random ones of the same size. The base's known questions and logits are computed once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import HfArgumentParser

from goft import GivensConfig
from goft.evaluation.knowledge import knowledge_retention
from goft.evaluation.model_io import merged_for_scoring
from goft.evaluation.runner import BaseReference, EvaluationSets
from goft.evaluation.shift import general_text_shift
from goft.io.formats import markdown_table, write_json
from goft.io.model_source import load_base_model, load_tokenizer, resolve_model_source


@dataclass
class NoiseArguments:
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Base model (embedded name or path)."})
    scales: list[float] = field(
        default_factory=lambda: [0.0005, 0.001, 0.002],
        metadata={"help": "Standard deviations of the raw angle parameters."},
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "One random adapter per seed."})
    output_dir: str = field(default="runs/retention-noise", metadata={"help": "Where retention_noise.json goes."})


def random_rotation(base, scale: float, seed: int):
    """A strict GOFT adapter on every linear layer with raw angle parameters drawn from N(0, scale²)."""
    model = get_peft_model(base, GivensConfig(target_modules="all-linear"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


def main(args: NoiseArguments) -> list[dict]:
    base = load_base_model(args.model, dtype="float32")
    tokenizer = load_tokenizer(resolve_model_source(args.model))
    reference = BaseReference.load(EvaluationSets(open_instructions=None))
    known = reference.known_questions(base, tokenizer)
    rows = []
    for scale in args.scales:
        for seed in args.seeds:
            model = random_rotation(base, scale, seed)
            with merged_for_scoring(model):
                shift = general_text_shift(model, tokenizer, reference.texts, base_cache=reference.logits)
                kept = knowledge_retention(model, tokenizer, known)
            rows.append(
                {
                    "scale": scale,
                    "seed": seed,
                    "kl_base_tuned": shift["kl_base_tuned"],
                    "retention": kept["retention"],
                    "retained": kept["retained"],
                    "known_to_base": kept["known_to_base"],
                    "lost": kept["lost"],
                }
            )
            print(
                f"scale {scale:g} seed {seed}: KL {shift['kl_base_tuned']:.3g}, retention "
                f"{kept['retention']:.3f} ({kept['retained']}/{kept['known_to_base']})",
                flush=True,
            )
            base = model.unload()  # the same base for the next adapter, untouched
    body = [
        [
            f"{r['scale']:g}",
            str(r["seed"]),
            f"{r['kl_base_tuned']:.3g}",
            f"{r['retention']:.3f} ({r['retained']}/{r['known_to_base']})",
        ]
        for r in rows
    ]
    print(markdown_table(["raw-angle scale", "seed", "KL(base‖tuned)/token, general text", "retention"], body))
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "retention_noise.json", {"model": args.model, "rows": rows})
    return rows


if __name__ == "__main__":
    (parsed,) = HfArgumentParser((NoiseArguments,)).parse_args_into_dataclasses()
    main(parsed)
