"""Publishing a finished run: the adapter, its tokenizer and its card, never checkpoints or secrets."""

import re

from huggingface_hub import HfApi, get_token

from .errors import RecipeError

PUSHED_FILES = ["adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer*", "special_tokens_map.json",
                "vocab.json", "merges.txt", "chat_template.jinja", "added_tokens.json", "generation_config.json"]
SECRET_KEY = re.compile(r"token|secret|password|api_key", re.IGNORECASE)


def hub_token(training_args) -> str | None:
    return training_args.hub_token or get_token()


def check_push_settings(training_args) -> None:
    """Fail before any training when a push could not succeed at the end."""
    if not training_args.push_to_hub:
        return
    if not training_args.hub_model_id:
        raise RecipeError("`push_to_hub: true` needs `hub_model_id` (owner/name of the adapter repo to create).")
    if not hub_token(training_args):
        raise RecipeError("`push_to_hub: true` but no Hub token was found: run `hf auth login`, set HF_TOKEN, or "
                          "pass `hub_token`.")


def push_run(folder: str, training_args, commit_message: str) -> str:
    """Create (or reuse) the repo and upload the run's public files; returns the repo URL."""
    api = HfApi(token=hub_token(training_args))
    repo = api.create_repo(training_args.hub_model_id, private=training_args.hub_private_repo, exist_ok=True)
    api.upload_folder(repo_id=repo.repo_id, folder_path=folder, allow_patterns=PUSHED_FILES,
                      commit_message=commit_message, revision=training_args.hub_revision)
    return str(repo)


def redact(value, key: str = ""):
    """A copy of a recipe value with anything secret replaced, for cards, logs and saved configs."""
    if key and SECRET_KEY.search(key) and value not in (None, False, ""):
        return "<redacted>"
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value
