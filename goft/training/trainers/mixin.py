"""`GoftTrainerMixin`: what goft adds to a TRL trainer, in one class to put before it (see `sft`, `dpo`).

In method-resolution order, outermost first:

- `SafeguardsMixin` (`goft.training.runs.safeguards`): complete checkpoints, a stop on a non-finite loss, and no
  checkpoint of a strict adapter that is no longer orthogonal; it sees the loss with every regulariser term in it;
- `WholeAdaptersUnderFsdp1Mixin` (`goft.training.parallel.fsdp`): adapters kept whole under FSDP1;
- `ResumeChangesMixin` (`goft.training.runs.run_spec`): recipe values changed at a resume reach the optimizer;
- `RegularizedLossMixin` (`regularized`): the method's regularisers and the anchor, each logged as its own metric.
"""

from __future__ import annotations

from goft.methods import is_exactly_orthogonal
from goft.regularizers import Regularizer
from goft.training.parallel.fsdp import WholeAdaptersUnderFsdp1Mixin
from goft.training.runs.run_spec import ResumeChangesMixin
from goft.training.runs.safeguards import SafeguardsMixin
from goft.training.trainers.regularized import RegularizedLossMixin


class GoftTrainerMixin(SafeguardsMixin, WholeAdaptersUnderFsdp1Mixin, ResumeChangesMixin, RegularizedLossMixin):
    """Put before a `transformers.Trainer` subclass (TRL's `SFTTrainer`, `DPOTrainer`, or your own).

    Args:
        regularizers: terms added to the training (`goft.regularizers_for(config)` gives a method's; the anchor
            is another), each logged under its `metric`.
        strict_orthogonal: refuse to checkpoint an adapter that is no longer exactly orthogonal; by default, on
            when every adapter of the model is a strict Givens adapter.
        run_spec: what shapes the run, recorded in every checkpoint (`goft.training.runs.run_spec.build_spec`).
        resume_changes: recipe keys changed at the resumed step, put into the restored optimizer.
    """

    def __init__(
        self,
        *args,
        regularizers: tuple[Regularizer, ...] = (),
        strict_orthogonal: bool | None = None,
        run_spec: dict | None = None,
        resume_changes: tuple[str, ...] = (),
        **kwargs,
    ):
        self.regularizers = tuple(regularizers)
        self.run_spec = run_spec
        self.resume_changes = tuple(resume_changes)
        super().__init__(*args, **kwargs)
        if strict_orthogonal is None:
            configs = getattr(self.model, "peft_config", None) or {}
            strict_orthogonal = bool(configs) and all(is_exactly_orthogonal(c) for c in configs.values())
        self.strict_orthogonal = strict_orthogonal
