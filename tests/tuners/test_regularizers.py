"""One mechanism for every method's regulariser: in the loss (qGOFT, HRA) or after gradient clipping (SORSA's rule),
logged under its own name, once per optimizer step whatever the gradient accumulation."""

import copy

import pytest
import torch
from datasets import Dataset
from peft import HRAConfig, LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments

from goft import GivensConfig, SorsaConfig, orthogonality_penalty, sorsa_orthonormality
from goft.regularizers import Regularizer, hra_orthogonality, regularizers_for
from goft.training.trainers.regularized import with_regularizers
from goft.tuners.orthogonality import defect_norm
from tests.support.training import perturb

HRA_LAMBDA = 1e-4


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def token_rows(n=4, length=12):
    ids = torch.randint(0, 97, (n, length), generator=torch.Generator().manual_seed(5))
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def train(
    model,
    tmp_path,
    regularizers,
    *,
    lr=0.1,
    max_grad_norm=1e6,
    batch=4,
    accumulation=1,
    steps=1,
    scheduler="constant",
    warmup=0,
    optim="sgd",
):
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        use_cpu=True,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type=scheduler,
        warmup_steps=warmup,
        optim=optim,
        weight_decay=0.0,
        max_grad_norm=max_grad_norm,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = with_regularizers(Trainer, regularizers)(model=model, args=args, train_dataset=token_rows())
    trainer.train()
    return trainer


def sorsa_model(tiny_llama, gamma=0.05):
    model = get_peft_model(tiny_llama, SorsaConfig(r=4, gamma=gamma))
    perturb(model)  # away from orthonormal, so that the regulariser's gradient is substantial
    return model


# --- which regulariser each method gets ----------------------------------------------------------------------


def test_regularizers_follow_the_method_and_its_switch():
    assert [r.metric for r in regularizers_for(GivensConfig(strict=False, quasi=True), HRA_LAMBDA)] == ["qgoft_penalty"]
    assert regularizers_for(GivensConfig(strict=False, quasi=True, orthogonality_penalty_weight=0.0), HRA_LAMBDA) == ()
    assert regularizers_for(GivensConfig(), HRA_LAMBDA) == ()  # strict GOFT is orthogonal by construction
    (sorsa,) = regularizers_for(SorsaConfig(gamma=4e-4), HRA_LAMBDA)
    assert (sorsa.metric, sorsa.weight, sorsa.after_clipping) == ("sorsa_orthonormality", 4e-4, True)
    assert regularizers_for(SorsaConfig(gamma=0.0), HRA_LAMBDA) == ()
    (hra,) = regularizers_for(HRAConfig(r=8), HRA_LAMBDA)
    assert (hra.metric, hra.weight, hra.after_clipping) == ("hra_orthogonality", 1e-4, False)
    assert regularizers_for(HRAConfig(r=8), hra_lambda=0.0) == ()
    assert regularizers_for(HRAConfig(r=8, apply_GS=True), HRA_LAMBDA) == ()  # Gram-Schmidt: orthogonal already
    assert regularizers_for(LoraConfig(), HRA_LAMBDA) == ()
    assert with_regularizers(Trainer, ()) is Trainer


# --- the regularisers themselves ------------------------------------------------------------------------------


def test_defect_norm_is_the_frobenius_norm_with_no_round_off_gradient():
    x = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(defect_norm(x), torch.linalg.matrix_norm(x))
    assert torch.autograd.gradcheck(defect_norm, (x,))
    # exactly zero, or round-off of an orthonormal matrix: value exact, gradient 0 (not NaN, not noise)
    q, _ = torch.linalg.qr(torch.randn(48, 8))
    for defect in (torch.zeros(8, 8), q.T @ q - torch.eye(8)):
        defect = defect.clone().requires_grad_(True)
        value = defect_norm(defect)
        value.backward()
        assert value.item() == pytest.approx(torch.linalg.matrix_norm(defect).item(), abs=1e-12)
        assert torch.equal(defect.grad, torch.zeros_like(defect))
    assert (q.T @ q - torch.eye(8)).abs().max() > 0  # the round-off case is not trivially zero


def test_hra_regulariser_is_zero_for_orthonormal_reflections_and_its_gradient_flows(tiny_llama):
    model = get_peft_model(tiny_llama, HRAConfig(r=4, target_modules=["q_proj", "v_proj"]))
    at_init = hra_orthogonality(model)
    assert at_init.item() > 1.0  # peft starts from pairs of equal vectors (identity), far from orthonormal
    at_init.backward()
    layers = [m for m in model.modules() if hasattr(m, "hra_u")]
    assert all(
        torch.isfinite(m.hra_u["default"].grad).all() and m.hra_u["default"].grad.abs().sum() > 0 for m in layers
    )
    with torch.no_grad():
        for m in layers:  # orthogonal columns of any lengths: Û is orthonormal, the regulariser vanishes
            q, _ = torch.linalg.qr(torch.randn(m.hra_u["default"].shape))
            m.hra_u["default"].copy_(q * torch.tensor([0.5, 2.0, 3.0, 1.0]))
    assert hra_orthogonality(model).item() < 1e-5
    with model.disable_adapter():
        assert hra_orthogonality(model).item() == 0.0


def test_hra_regulariser_matches_its_formula_in_float64(tiny_llama):
    model = get_peft_model(tiny_llama.double(), HRAConfig(r=4, target_modules=["q_proj"]))
    expected = 0.0
    for m in model.modules():
        if hasattr(m, "hra_u"):
            u = m.hra_u["default"].detach()
            unit = u / u.norm(dim=0)
            expected += torch.linalg.matrix_norm(torch.eye(4, dtype=u.dtype) - unit.T @ unit).item()
    assert hra_orthogonality(model).item() == pytest.approx(expected, rel=1e-12)


# --- in the loss, logged, once per optimizer step -------------------------------------------------------------


@pytest.mark.parametrize("method", ["hra", "qgoft"])
def test_loss_regulariser_is_added_to_the_loss_and_logged_only_when_enabled(tiny_llama, tmp_path, method):
    if method == "hra":
        config, value, weight = HRAConfig(r=4, target_modules=["q_proj", "v_proj"]), hra_orthogonality, 0.3
        regularizer = Regularizer("hra_orthogonality", value, weight)
    else:
        config = GivensConfig(strict=False, quasi=True, init_weights=False, orthogonality_penalty_weight=0.3)
        value, weight = orthogonality_penalty, 1.0
        regularizer = Regularizer("qgoft_penalty", value, weight)
    untouched = copy.deepcopy(tiny_llama)
    model = get_peft_model(tiny_llama, config)
    trainer = train(model, tmp_path, (regularizer,), lr=0.0, steps=2)  # lr 0: the model stays put
    batch = {k: torch.tensor(v) for k, v in token_rows()[:4].items()}
    model.train()
    plain = model(**batch).loss
    regularized = trainer.compute_loss(model, batch)  # with gradients on, as in training
    expected_term = weight * value(model)
    assert expected_term.item() > 0
    torch.testing.assert_close(regularized - plain, expected_term, rtol=1e-5, atol=1e-7)
    logged = [e[regularizer.metric] for e in trainer.state.log_history if regularizer.metric in e]
    assert len(logged) == 2 and logged[0] == pytest.approx(value(model).item(), rel=1e-5)

    unregularized = train(get_peft_model(untouched, config), tmp_path, (), lr=0.0, steps=2)
    assert not any(regularizer.metric in e for e in unregularized.state.log_history)


@pytest.mark.parametrize("method", ["hra", "sorsa"])
def test_regulariser_counts_once_per_step_whatever_the_accumulation(tiny_llama, tmp_path, method):
    if method == "hra":
        base = get_peft_model(tiny_llama, HRAConfig(r=4, target_modules=["q_proj", "v_proj"]))
        regularizers = (Regularizer("hra_orthogonality", hra_orthogonality, 0.5),)
    else:
        base = sorsa_model(tiny_llama)
        regularizers = (Regularizer("sorsa_orthonormality", sorsa_orthonormality, 0.05, after_clipping=True),)
    one_batch = train(copy.deepcopy(base), tmp_path, regularizers, batch=4, accumulation=1)
    accumulated = train(copy.deepcopy(base), tmp_path, regularizers, batch=2, accumulation=2)
    no_regularizer = train(copy.deepcopy(base), tmp_path, (), batch=4, accumulation=1)
    a, b, c = (trainable(t.model) for t in (one_batch, accumulated, no_regularizer))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    assert max((a[n] - c[n]).abs().max().item() for n in a) > 1e-4  # and the regulariser did move the weights


# --- SORSA's update rule: after clipping, scaled by gamma / lr --------------------------------------------------


def test_sorsa_rule_is_applied_after_clipping(tiny_llama, tmp_path):
    lr, gamma, max_norm = 0.1, 0.05, 1e-3
    model = sorsa_model(tiny_llama, gamma)
    start = copy.deepcopy(model)
    regularizers = regularizers_for(model.peft_config["default"], HRA_LAMBDA)
    train(model, tmp_path, regularizers, lr=lr, max_grad_norm=max_norm)

    # by hand: task gradient, clipped; then + (gamma / lr) * grad(regulariser); one SGD step
    params = {n: p for n, p in start.named_parameters() if p.requires_grad}
    batch = {k: torch.tensor(v) for k, v in token_rows().to_dict().items()}
    start.train()
    start(**batch).loss.backward()
    task_norm = torch.nn.utils.clip_grad_norm_(params.values(), max_norm)
    assert task_norm > 100 * max_norm  # clipping really acts
    reg_grads = torch.autograd.grad(sorsa_orthonormality(start), list(params.values()), allow_unused=True)
    expected = {}
    for (name, p), reg_grad in zip(params.items(), reg_grads):
        grad = p.grad + (gamma / lr) * (reg_grad if reg_grad is not None else 0)
        expected[name] = p.detach() - lr * grad
    after = trainable(model)
    for name in expected:
        torch.testing.assert_close(after[name], expected[name], rtol=0, atol=1e-6)

    # had the regulariser gone through clipping, its step would have been scaled down by the same factor
    clipped_reg_step = max((after[n] - params[n].detach()).abs().max().item() for n in params)
    assert clipped_reg_step > 10 * lr * max_norm


def test_sorsa_rule_matches_the_loss_term_when_nothing_is_clipped(tiny_llama, tmp_path):
    lr, gamma = 0.1, 0.05
    model = sorsa_model(tiny_llama, gamma)
    rule = train(copy.deepcopy(model), tmp_path, (Regularizer("r", sorsa_orthonormality, gamma, True),), lr=lr)
    in_loss = train(copy.deepcopy(model), tmp_path, (Regularizer("r", sorsa_orthonormality, gamma / lr),), lr=lr)
    a, b = trainable(rule.model), trainable(in_loss.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_sorsa_rule_skips_steps_with_zero_learning_rate(tiny_llama, tmp_path):
    model = sorsa_model(tiny_llama)
    before = trainable(model)
    trainer = train(
        model,
        tmp_path,
        (Regularizer("sorsa_orthonormality", sorsa_orthonormality, 0.05, True),),
        scheduler="constant_with_warmup",
        warmup=5,
        steps=1,
        optim="adamw_torch",
    )
    after = trainable(trainer.model)
    for name in before:  # warm-up step 0 has lr 0: no infinite weight, no NaN, nothing moves
        assert torch.isfinite(after[name]).all()
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    assert any("sorsa_orthonormality" in e for e in trainer.state.log_history)
