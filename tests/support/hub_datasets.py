"""Datasets written as the Hub stores them, in the shapes of the datasets alignment-handbook's recipes name, so that
their recipes run on local copies: an UltraChat-like folder (`prompt`, `prompt_id`, `messages`; splits `train_sft`,
`test_sft`, `train_gen`), an UltraFeedback-binarized-like folder (a `prompt` string beside `chosen`/`rejected`
conversations that repeat the user turn, scores; splits `train_prefs`, `test_prefs`), and a smoltalk2-like folder
with configs declared in its README (`SFT` and `Preference`, each with named splits, rows carrying
`chat_template_kwargs`). Every file is parquet under `data/` (or the config's folder), shards named
`<split>-00000-of-00001.parquet`, as the Hub writes them; and an IMDb-like folder of reviews (`text`, `label`; splits
`train`, `test`, `unsupervised`). The rows are generated: nothing is downloaded.
"""

from pathlib import Path

from datasets import Dataset

FACTS = [(f"What is {a} plus {b}?", f"{a + b}.", f"{a + b + 1}.") for a in range(1, 9) for b in range(1, 7)]


def _conversation(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _write_split(folder: Path, split: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))


def ultrachat_like(root: Path, rows_per_split: int = 24) -> Path:
    """`root/ultrachat_200k` with `data/{train_sft,test_sft,train_gen}-*.parquet`."""
    folder = root / "ultrachat_200k"
    for split, offset in (("train_sft", 0), ("test_sft", rows_per_split), ("train_gen", 0)):
        rows = [
            {"prompt": q, "prompt_id": f"{split}-{i}", "messages": _conversation(q, a)}
            for i, (q, a, _) in enumerate(FACTS[offset : offset + rows_per_split])
        ]
        _write_split(folder / "data", split, rows)
    return folder


def ultrafeedback_like(root: Path, rows_per_split: int = 24) -> Path:
    """`root/ultrafeedback_binarized` with `data/{train_prefs,test_prefs,train_sft}-*.parquet`."""
    folder = root / "ultrafeedback_binarized"
    for split, offset in (("train_prefs", 0), ("test_prefs", rows_per_split), ("train_sft", 0)):
        rows = [
            {
                "prompt": q,
                "prompt_id": f"{split}-{i}",
                "chosen": _conversation(q, good),
                "rejected": _conversation(q, bad),
                "messages": _conversation(q, good),
                "score_chosen": 9.0,
                "score_rejected": 2.0,
            }
            for i, (q, good, bad) in enumerate(FACTS[offset : offset + rows_per_split])
        ]
        _write_split(folder / "data", split, rows)
    return folder


SMOLTALK_SFT_SPLITS = ("everyday_conversations_no_think", "systemchats_think")
SMOLTALK_PREFERENCE_SPLITS = ("tulu_preference_no_think", "pref_mix_think")


def smoltalk2_like(root: Path, rows_per_split: int = 16) -> Path:
    """`root/smoltalk2` with configs `SFT` and `Preference` declared in README.md, each split a parquet file."""
    folder = root / "smoltalk2"
    metadata = ["---", "configs:"]
    for config, splits in (("SFT", SMOLTALK_SFT_SPLITS), ("Preference", SMOLTALK_PREFERENCE_SPLITS)):
        metadata += [f"- config_name: {config}", "  data_files:"]
        for number, split in enumerate(splits):
            thinking = split.endswith("_think") and not split.endswith("no_think")
            facts = FACTS[number * rows_per_split : (number + 1) * rows_per_split]
            if config == "SFT":
                rows = [
                    {"messages": _conversation(q, a), "chat_template_kwargs": {"enable_thinking": thinking}}
                    for q, a, _ in facts
                ]
            else:
                rows = [
                    {
                        "prompt": [{"role": "user", "content": q}],
                        "chosen": [{"role": "assistant", "content": good}],
                        "rejected": [{"role": "assistant", "content": bad}],
                        "chat_template_kwargs": {"enable_thinking": thinking},
                    }
                    for q, good, bad in facts
                ]
            _write_split(folder / config, split, rows)
            metadata += [f"  - split: {split}", f"    path: {config}/{split}-*.parquet"]
    (folder / "README.md").write_text("\n".join([*metadata, "---", "", "Generated rows in smoltalk2's shape.", ""]))
    return folder


def imdb_like(root: Path, rows_per_split: int = 16) -> Path:
    """`root/imdb` with `plain_text/{train,test,unsupervised}-*.parquet` of reviews and their labels."""
    folder = root / "imdb"
    for split in ("train", "test", "unsupervised"):
        rows = [
            {"text": f"A {split} review, number {i}: the film was {'fine' if i % 2 else 'dull'}.", "label": i % 2}
            for i in range(rows_per_split)
        ]
        _write_split(folder / "plain_text", split, rows)
    return folder
