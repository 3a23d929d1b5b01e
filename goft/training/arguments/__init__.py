"""A recipe's keys: the dataclasses goft adds to TRL's (`fields`), their ranges and the files they name (`checks`),
the YAML recipe file (`recipe_file`), `--help` (`help`), the parser and the run of a recipe (`cli`), and the checks
run before anything loads (`preflight`).

May import: `goft.data`, `goft.io`, `goft.training.runs`, `goft.training.parallel`, `goft.training.publish`. Only
`cli` is the parser: nothing else in goft imports it.
"""
