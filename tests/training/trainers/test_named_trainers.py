"""The named trainers a user imports: `GoftSFTTrainer` and `GoftDPOTrainer` are TRL's trainers with goft's mixin,
take its keywords beside TRL's, train a Givens adapter from a plain Python script, and can be subclassed."""

import pytest
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

import goft
from goft import GivensConfig
from goft.training.runs.safeguards import SafeguardsMixin
from goft.training.trainers import GoftDPOTrainer, GoftSFTTrainer, GoftTrainerMixin
from goft.training.trainers.regularized import RegularizedLossMixin
from tests.support.data import dpo_rows, sft_rows
from tests.support.models import save_tiny_chat_model


@pytest.mark.parametrize(("named", "trl_class"), [(GoftSFTTrainer, SFTTrainer), (GoftDPOTrainer, DPOTrainer)])
def test_each_named_trainer_is_trls_with_the_mixin_outermost(named, trl_class):
    order = named.__mro__
    assert issubclass(named, trl_class) and issubclass(named, GoftTrainerMixin)
    # the safeguards see the loss with every regulariser in it: they come before the regulariser, both before TRL's
    assert order.index(SafeguardsMixin) < order.index(RegularizedLossMixin) < order.index(trl_class)


def training_args(config_class, folder, **changes):
    return config_class(
        output_dir=str(folder),
        use_cpu=True,
        bf16=False,
        max_steps=2,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        max_length=64,
        **changes,
    )


@pytest.fixture
def chat_model(tmp_path):
    folder = save_tiny_chat_model(tmp_path / "base")
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


@pytest.mark.slow  # trains two steps
def test_a_script_trains_qgoft_with_its_regulariser_logged(tmp_path, chat_model):
    model, tokenizer = chat_model
    config = GivensConfig(strict=False, quasi=True, orthogonality_penalty_weight=0.01, target_modules=["q_proj"])
    trainer = GoftSFTTrainer(
        model=model,
        args=training_args(SFTConfig, tmp_path / "out"),
        train_dataset=Dataset.from_list(sft_rows(8)),
        processing_class=tokenizer,
        peft_config=config,
        regularizers=goft.regularizers_for(config),
    )
    assert not trainer.strict_orthogonal  # a quasi adapter is not exactly orthogonal: no orthogonality check
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "qgoft_penalty" in entry]
    assert len(logged) == 2 and all(entry["qgoft_penalty"] >= 0 for entry in logged)


@pytest.mark.slow  # trains two steps
def test_a_subclass_of_the_dpo_trainer_trains_a_strict_adapter(tmp_path, chat_model):
    model, tokenizer = chat_model
    calls = []

    class CountingDPOTrainer(GoftDPOTrainer):
        def training_step(self, *args, **kwargs):
            calls.append(self.state.global_step)
            return super().training_step(*args, **kwargs)

    trainer = CountingDPOTrainer(
        model=model,
        args=training_args(DPOConfig, tmp_path / "out"),
        train_dataset=Dataset.from_list(dpo_rows(8)),
        processing_class=tokenizer,
        peft_config=GivensConfig(target_modules=["q_proj", "v_proj"]),
    )
    assert trainer.strict_orthogonal  # on by default: every adapter of the model is a strict Givens adapter
    trainer.train()
    assert calls == [0, 1]
    assert goft.orthogonality_error(trainer.model) <= 1e-5
