"""A run's safety over time: checkpoints and auto-resume (`checkpoints`), what shapes a run and resuming with changes
(`run_spec`), and faults a run survives or stops on cleanly (`safeguards`). The output folder itself (lock,
finished runs, setting aside) is `goft.io.outputs`.

May import: `goft.io`, `goft.data`, `goft.training.parallel`, `goft.training.trainers.regularized`.
"""
