"""Evaluating saved adapters against their base: each adapter is loaded onto one base model, measured and unloaded.

Per adapter: the task metric with the adapter off and on (held-out split of its run), the shift of the next-token
distribution on general text (KL, perplexity), knowledge retention on the retention questions, drift on open
instructions, the orthogonality error of strict Givens adapters and the largest change of an angle between two
neurons. What depends on the base alone (its logits on the general text, the questions it knows, its own answers
to the instructions) is computed once and reused for every adapter."""

import dataclasses
import logging
import os
from pathlib import Path

from peft import PeftModel

from goft.data.arguments import DataArguments
from goft.data.loading import load_recipe_dataset, rows_fingerprint
from goft.data.stages import STAGES
from goft.errors import RecipeError
from goft.evaluation import assets
from goft.evaluation.drift import BaseAnswers, answer_drift, base_answers, load_instructions
from goft.evaluation.knowledge import Question, knowledge_retention, known_questions, load_questions
from goft.evaluation.model_io import merged_for_scoring
from goft.evaluation.shift import BaseLogitsCache, general_text_shift, load_general_text
from goft.evaluation.tasks import task_kind, task_metrics
from goft.evaluation.weights import adapter_parameter_count, neuron_angle_changes, strict_orthogonality_error
from goft.io.adapter_checks import check_adapters_fit
from goft.io.model_source import ModelSource, load_adapter_config, load_causal_lm, load_tokenizer, resolve_model_source
from goft.io.outputs import FINISHED_MARKER, read_run_record
from goft.methods import method_label, peft_type_name

logger = logging.getLogger(__name__)

DEFAULT_SEED = 42  # TRL's default training seed: the split an explicit `dataset_name` gets without a run record


@dataclasses.dataclass
class EvaluationSets:
    """What every adapter is measured on; a path of None skips that measure."""

    general_text: str | Path | None = assets.GENERAL_TEXT
    retention_questions: str | Path | None = assets.RETENTION_QUESTIONS
    open_instructions: str | Path | None = assets.OPEN_INSTRUCTIONS
    task_samples: int = 40
    max_length: int = 256
    dataset_name: str | None = None  # score every adapter's task on this dataset's test split

    def describe(self) -> dict:
        """The sets as a report records them: each file by `assets.describe_file` (no machine's paths)."""
        files = ("general_text", "retention_questions", "open_instructions")
        return {k: (assets.describe_file(v) if k in files else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class BaseReference:
    """What depends on the base model alone, computed on first use and reused for every adapter."""

    texts: list[str] | None
    questions: list[Question] | None
    instructions: list[str] | None
    logits: BaseLogitsCache = dataclasses.field(default_factory=BaseLogitsCache)
    known: list[Question] | None = None
    answers: BaseAnswers | None = None

    @classmethod
    def load(cls, sets: EvaluationSets) -> "BaseReference":
        return cls(
            texts=load_general_text(sets.general_text) if sets.general_text else None,
            questions=load_questions(sets.retention_questions) if sets.retention_questions else None,
            instructions=load_instructions(sets.open_instructions) if sets.open_instructions else None,
        )

    def known_questions(self, model, tokenizer) -> list[Question]:
        if self.known is None:
            self.known = known_questions(model, tokenizer, self.questions)
            logger.info("the base answers %d of %d retention questions correctly", len(self.known), len(self.questions))
        return self.known

    def base_answers(self, model, tokenizer) -> BaseAnswers:
        if self.answers is None:
            self.answers = base_answers(model, tokenizer, self.instructions)
        return self.answers


def measure(model, tokenizer, reference: BaseReference, sets: EvaluationSets, test_dataset=None) -> dict:
    """Every measure of the active adapter of the peft `model` against its base (the same model, adapter off).
    The weights are read first; the forward passes then run with the adapter merged (`merged_for_scoring`)."""
    name = model.active_adapter
    config = model.peft_config[name]
    angles = neuron_angle_changes(model)
    result = {
        "method": peft_type_name(config),
        "label": method_label(config),
        "base_model": config.base_model_name_or_path,
        "trainable_parameters": adapter_parameter_count(model, name),
        "orthogonality_error": strict_orthogonality_error(model, name),
        "max_neuron_angle_change_deg": max(angles.values(), default=0.0),
        "neuron_angle_change_deg_by_layer": angles,
        "task": None,
        "knowledge": None,
        "drift": None,
    }
    with merged_for_scoring(model):  # the forward passes below run at the base model's speed
        if reference.texts is not None:
            result.update(
                general_text_shift(
                    model, tokenizer, reference.texts, max_length=sets.max_length, base_cache=reference.logits
                )
            )
        if reference.questions is not None:
            result["knowledge"] = knowledge_retention(model, tokenizer, reference.known_questions(model, tokenizer))
        if reference.instructions is not None:
            result["drift"] = answer_drift(
                model, tokenizer, reference.base_answers(model, tokenizer), max_length=sets.max_length
            )
        if test_dataset is not None and sets.task_samples > 0:
            result["task"] = task_metrics(model, tokenizer, test_dataset, sets.task_samples, max_length=sets.max_length)
    return result


def evaluate_adapter(
    base_model, tokenizer, adapter_path, reference: BaseReference, sets: EvaluationSets, test_dataset=None
) -> dict:
    """Load the adapter onto `base_model`, measure it, and unload it again: `base_model` comes back unchanged,
    ready for the next adapter. The task metric needs `test_dataset` and `sets.task_samples` > 0."""
    was_training = base_model.training
    try:
        model = PeftModel.from_pretrained(base_model, str(Path(adapter_path).expanduser()))
    except (RuntimeError, KeyError, ValueError) as error:  # e.g. another architecture's modules or shapes
        raise RecipeError(
            f"The adapter {str(adapter_path)!r} does not fit the base model {base_model.name_or_path!r}: {error}"
        ) from None
    try:
        model.eval()
        return {"adapter": str(adapter_path), **measure(model, tokenizer, reference, sets, test_dataset)}
    finally:
        model.unload()
        base_model.train(was_training)


def _data_record(adapter_path) -> dict | None:
    """The `data` record a finished recipe run wrote next to its adapter, or None."""
    record = read_run_record(adapter_path)
    data = record.get("data") if record else None
    if data is not None and not (
        isinstance(data, dict)
        and any(data.get(key) for key in ("dataset_name", "dataset_mixture", "dataset_mixer", "datasets"))
    ):
        raise RecipeError(
            f"The `data` record in {Path(adapter_path) / FINISHED_MARKER} names no `dataset_name` "
            "(nor `dataset_mixture`, nor `datasets`)."
        )
    return data


def _data_label(record: dict) -> str:
    """The data a record names, for messages: its dataset, or the ids of its mixture's datasets."""
    if record.get("dataset_name"):
        return repr(record["dataset_name"])
    if record.get("dataset_mixture"):
        return "the mixture of " + ", ".join(repr(member.get("id")) for member in record["dataset_mixture"]["datasets"])
    if record.get("dataset_mixer"):
        return "the mixture of " + ", ".join(map(repr, record["dataset_mixer"]))
    return "the mixture of " + ", ".join(repr(member.get("path")) for member in record["datasets"])


def held_out_split(adapter_path, dataset_name: str | None = None):
    """The held-out rows to score `adapter_path` on: `dataset_name`'s test split when given (carved with the
    recipe defaults when it has none), else the split its run made, rebuilt from goft_run.json; None when neither."""
    run = read_run_record(adapter_path) or {}
    stage, text_field = (
        STAGES.get(run.get("stage")),
        "text",
    )  # the run's rows are checked and normalised as it read them
    if dataset_name:
        args, seed = DataArguments(dataset_name=dataset_name), DEFAULT_SEED
    else:
        record = _data_record(adapter_path)
        if record is None:
            return None
        args = DataArguments(
            dataset_name=record.get("dataset_name"),
            dataset_mixture=record.get("dataset_mixture"),
            datasets=record.get("datasets"),
            test_split_size=record.get("test_split_size"),
            dataset_config=record.get("dataset_config"),
            dataset_train_split=record.get("dataset_train_split", "train"),
            dataset_test_split=record.get("dataset_test_split", "test"),
            dataset_test_size=record.get("dataset_test_size", 0.1),
            dataset_splits=record.get("dataset_splits"),
            dataset_mixer=record.get("dataset_mixer"),
            dataset_configs=record.get("dataset_configs"),
        )
        seed, text_field = record.get("seed", DEFAULT_SEED), record.get("dataset_text_field", "text")
        if "dataset_text_field" not in record:
            stage = None  # an older run, which read its rows as they were
    dataset = load_recipe_dataset(args, stage, seed=seed, text_field=text_field)
    test = dataset[args.dataset_test_split]
    task_kind(test.column_names)
    if not dataset_name:
        _check_data_unchanged(adapter_path, record, dataset)
    return test


def _check_data_unchanged(adapter_path, record: dict, dataset) -> None:
    """The data rebuilt from a run's record is the data it trained and held out: each split's rows have the recorded
    fingerprint. Data changed since training would give other "held-out" rows, some of which may have been trained
    on, or a held-out split beside other training data than the adapter saw."""
    recorded = record.get("split_sha256")
    if not recorded:
        logger.warning(
            "%s records no fingerprint of its data (an older run): the held-out split rebuilt from %s "
            "is used unchecked.",
            adapter_path,
            _data_label(record),
        )
        return
    changed = [
        split for split, digest in recorded.items() if split in dataset and rows_fingerprint(dataset[split]) != digest
    ]
    if changed:
        raise RecipeError(
            f"The data of the run in {str(adapter_path)!r} ({_data_label(record)}) changed since "
            f"it was trained (its {' and '.join(changed)} split{'s' if len(changed) > 1 else ''} "
            "differ): the held-out split rebuilt from it is not the one the run held out, and some of "
            "its rows may have been trained on. Restore the data the run used, or score on a dataset "
            "with its own test split (`--dataset_name`)."
        )


@dataclasses.dataclass
class Plan:
    """Everything checked before a model is loaded: the shared base, the adapters, the sets, the held-out splits."""

    source: ModelSource
    adapters: list[ModelSource]
    test_splits: list
    reference: BaseReference


def _one_spelling(base: str) -> str:
    local = os.path.expanduser(base)
    return os.path.abspath(local) if os.path.exists(local) else base


def plan_evaluation(adapter_paths, base_model_name: str | None, sets: EvaluationSets) -> Plan:
    """Every check that needs no model: adapter folders, one shared base, the evaluation sets, held-out splits."""
    if not adapter_paths:
        raise RecipeError("Name at least one adapter folder to evaluate (`--adapters runs/a runs/b`).")
    configs = {str(path): load_adapter_config(path) for path in adapter_paths}
    bases = {}
    for path, config in configs.items():
        if config.base_model_name_or_path:
            bases[path] = _one_spelling(config.base_model_name_or_path)
        elif not base_model_name:
            raise RecipeError(
                f"The adapter {path!r} does not name its base model (`base_model_name_or_path` "
                "in adapter_config.json); pass `--base_model`."
            )
    if len(set(bases.values())) > 1:
        listing = ", ".join(f"{path} -> {base}" for path, base in bases.items())
        raise RecipeError(
            f"The adapters were trained on different base models ({listing}); evaluate the adapters "
            "of each base separately."
        )
    reference = BaseReference.load(sets)
    tests = [held_out_split(p, sets.dataset_name) if sets.task_samples > 0 else None for p in adapter_paths]
    for path, test in zip(adapter_paths, tests):
        if test is None and sets.task_samples > 0:
            logger.warning(
                "%s has no %s with its data record: its task metric is skipped (give `dataset_name` to score it).",
                path,
                FINISHED_MARKER,
            )
    base = resolve_model_source(base_model_name or next(iter(bases.values())))
    adapters = [
        dataclasses.replace(base, adapter_path=os.path.expanduser(path), adapter_config=config)
        for path, config in configs.items()
    ]
    check_adapters_fit(base, adapters)
    return Plan(source=base, adapters=adapters, test_splits=tests, reference=reference)


class Evaluator:
    """One base model, loaded once, on which adapters are evaluated one after another."""

    def __init__(self, source, sets: EvaluationSets, reference: BaseReference, dtype: str | None = "float32"):
        self.source, self.sets, self.reference = source, sets, reference
        self.model = load_causal_lm(source, dtype=dtype)

    def evaluate(self, adapter_path, test_dataset=None) -> dict:
        adapter = dataclasses.replace(self.source, adapter_path=os.path.expanduser(str(adapter_path)))
        tokenizer = load_tokenizer(adapter)  # the adapter's own tokenizer when it saved one
        return evaluate_adapter(self.model, tokenizer, adapter_path, self.reference, self.sets, test_dataset)


def evaluate_adapters(
    adapter_paths,
    base_model_name: str | None = None,
    sets: EvaluationSets | None = None,
    dtype: str | None = "float32",
    before_loading=lambda: None,
) -> list[dict]:
    """Evaluate adapters trained on one base: the base (default: the adapters' `base_model_name_or_path`) is
    loaded once, and each adapter is loaded onto it, measured (see `measure`) and unloaded.

    Each adapter's task metric uses its run's held-out split (rebuilt from goft_run.json), or `sets.dataset_name`'s
    test split for all of them when given. Bad input is refused before any model is loaded, and `before_loading`
    is called once every check has passed."""
    sets = sets or EvaluationSets()
    plan = plan_evaluation(list(adapter_paths), base_model_name, sets)
    before_loading()  # every check has passed (e.g. the caller locks its output folder now)
    evaluator = Evaluator(plan.source, sets, plan.reference, dtype)
    return [evaluator.evaluate(adapter.adapter_path, test) for adapter, test in zip(plan.adapters, plan.test_splits)]
