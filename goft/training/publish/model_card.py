"""The model card written next to every trained adapter and pushed with it."""

import importlib.metadata
from dataclasses import dataclass

from huggingface_hub import ModelCard, ModelCardData

from goft.data import mixtures, trl_datasets
from goft.data.loading import is_hub_dataset
from goft.io.formats import markdown_table
from goft.io.model_source import ModelSource
from goft.training.runs.run_spec import plain_value

GOFT_CITATION = """@InProceedings{pmlr-v235-ma24a,
  title     = {Parameter Efficient Quasi-Orthogonal Fine-Tuning via Givens Rotation},
  author    = {Ma, Xinyu and Chu, Xu and Yang, Zhibang and Lin, Yang and Gao, Xin and Zhao, Junfeng},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning},
  pages     = {33686--33729},
  year      = {2024},
  volume    = {235},
  series    = {Proceedings of Machine Learning Research},
  publisher = {PMLR}
}"""


def describe_data(dataset_name: str | None, mixture: dict | mixtures.Mixture | None = None) -> tuple[list[str], str]:
    """(the Hub datasets the run trained on, for the card's metadata; the card's dataset line): `dataset_name`, or
    every dataset of the recipe's mixture (a `dataset_mixture` value, or a read `Mixture`, TRL's `datasets` too) with
    its weight or fraction."""
    if mixture is None:
        return ([dataset_name] if dataset_name and is_hub_dataset(dataset_name) else []), f"`{dataset_name}`"
    if not isinstance(mixture, mixtures.Mixture):
        mixture = mixtures.read_mixture(mixture)
    members = mixture.members
    hub_ids = list(dict.fromkeys(member.id for member in members if _is_hub_member(member)))
    kind = "" if mixture.selection == mixtures.WEIGHT else " (TRL's `datasets`: the first rows of each)"
    return hub_ids, f"a mixture{kind} of " + ", ".join(_member_text(member) for member in members)


def _is_hub_member(member: mixtures.Member) -> bool:
    return not (member.key == trl_datasets.KEY and member.id == trl_datasets.JSON_BUILDER) and is_hub_dataset(member.id)


def _member_text(member: mixtures.Member) -> str:
    details = [f"config {member.config}"] if member.config else []
    details += [f"split {member.split}"] if member.split != "train" else []
    name = member.id
    if member.key != trl_datasets.KEY:
        details.append(f"weight {member.weight:g}")
    else:
        files = member.data_files.get(member.split, ()) if isinstance(member.data_files, dict) else member.data_files
        name = ", ".join(files) if member.id == trl_datasets.JSON_BUILDER and files else name
        details += [f"data_dir {member.data_dir}"] if member.data_dir else []
        details += [f"fraction {member.fraction:g}"] if member.fraction is not None else []
    return f"`{name}`" + (f" ({', '.join(details)})" if details else "")


def _metrics_table(metrics: dict) -> str:
    return markdown_table(
        ["metric", "value"],
        [[key, f"{value:.6g}" if isinstance(value, float) else value] for key, value in sorted(metrics.items())],
    )


@dataclass(frozen=True)
class CardFacts:
    """What a finished run's model card says about it, besides its metrics."""

    stage: str
    source: ModelSource
    method: str  # `goft.methods.describe_method`
    strict: bool  # exactly orthogonal: tagged `orthogonal`
    recipe_yaml: str  # the complete recipe, secrets removed
    dataset_name: str | None
    repo_or_dir: str  # where the card tells users to load the adapter from
    dataset_mixture: dict | mixtures.Mixture | None = None
    init_adapter: str | None = None  # the adapter the run continued
    strictness_waived: bool = False  # `allow_non_orthogonal_alignment`
    resume_changes: tuple = ()  # `run_spec` changes at resumes
    hyperparameters: dict | None = None  # `training_hyperparameters`


def build_model_card(facts: CardFacts, metrics: dict) -> ModelCard:
    """Card with metadata (base model, tags), the method, the full recipe, final metrics, usage and citation."""
    tags = ["goft", "givens", "trl", facts.stage, "peft"]
    if facts.strict:
        tags.append("orthogonal")
    hub_datasets, dataset_line = describe_data(facts.dataset_name, facts.dataset_mixture)
    data = ModelCardData(
        library_name="peft", base_model=facts.source.hub_base_model, tags=tags, datasets=hub_datasets or None
    )
    source = facts.source
    base_line = f"`{source.name}`"
    if source.upstream_id and source.upstream_id != source.name:
        base_line += (
            f" (the GGUF `{source.gguf_file}` of [{source.upstream_id}](https://huggingface.co/"
            f"{source.upstream_id}), dequantized; goft loads it by this short name)"
        )
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {facts.stage.upper()} adapter trained with goft",
        "",
        f"- **Base model:** {base_line}",
        f"- **Method:** {facts.method}",
        f"- **Stage:** {facts.stage}"
        + (f", continued from the adapter `{facts.init_adapter}`" if facts.init_adapter else ""),
        f"- **Dataset:** {dataset_line}",
    ]
    if facts.strictness_waived:
        lines += [
            "",
            "> **Warning:** this alignment-stage adapter is *not* exactly orthogonal. The run was allowed by "
            "`allow_non_orthogonal_alignment: true` (a baseline experiment).",
        ]
    lines += [
        "",
        "## How to load it",
        "",
        "```python",
        "import goft  # registers the Givens adapter type with peft; import it before loading",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"base = {_base_loading_code(source)}",
        f'model = PeftModel.from_pretrained(base, "{facts.repo_or_dir}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{facts.repo_or_dir}")',
        "```",
        "",
        "`model.merge_and_unload()` gives a plain transformers model that no longer needs goft.",
        "",
        "## Final metrics",
        "",
        _metrics_table(metrics),
        *_listed_section("Training hyper-parameters", facts.hyperparameters or {}),
        *_listed_section("Framework versions", framework_versions()),
        "",
        "## Recipe",
        "",
        "The complete recipe of this run (YAML keys and command-line flags; secrets removed):",
        "",
        "```yaml",
        facts.recipe_yaml.rstrip(),
        "```",
        *_changes_section(facts.resume_changes),
        "",
        "## Citation",
        "",
        "```bibtex",
        GOFT_CITATION,
        "```",
        "",
    ]
    return ModelCard("\n".join(lines))


FRAMEWORKS = (
    "goft",
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "accelerate",
    "tokenizers",
    "deepspeed",
    "bitsandbytes",
)


def framework_versions() -> dict:
    """The installed version of goft and of each library a run uses (those not installed are left out)."""
    versions = {}
    for name in FRAMEWORKS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def training_hyperparameters(args, processes: int) -> dict:
    """What TRL's cards list of a run's training: rates, batch sizes (per device and in all), schedule, length."""
    total = args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
    length = {"max_steps": args.max_steps} if args.max_steps > 0 else {"num_train_epochs": args.num_train_epochs}
    return {
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "processes": processes,
        "total_train_batch_size": total,
        "seed": args.seed,
        "optimizer": plain_value(args.optim),
        "lr_scheduler_type": plain_value(args.lr_scheduler_type),
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "max_grad_norm": args.max_grad_norm,
        **length,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
    }


def _listed_section(title: str, values: dict) -> list[str]:
    if not values:
        return []
    return ["", f"## {title}", "", *(f"- {key}: {value}" for key, value in values.items())]


def _changes_section(changes) -> list[str]:
    """The recipe values a resumed run changed (`resume_with_changes`): each took effect at its step."""
    if not changes:
        return []
    rows = [f"| {c['step']} | `{c['key']}` | `{c['before']}` | `{c['after']}` |" for c in changes]
    return [
        "",
        "## Resumed with changes",
        "",
        "This run was resumed with other settings than it started with (`resume_with_changes: true`). Up to "
        "each step below it trained with the earlier value, from that step on with the later one (the recipe "
        "above shows the final values):",
        "",
        "| from step | key | before | after |",
        "|---|---|---|---|",
        *rows,
    ]


def _base_loading_code(source) -> str:
    if source.upstream_id and source.upstream_id != source.name:
        return (
            "goft.training.load_base_model("
            f'"{source.name}")  # or AutoModelForCausalLM.from_pretrained("{source.upstream_id}")'
        )
    return f'AutoModelForCausalLM.from_pretrained("{source.name}")'
