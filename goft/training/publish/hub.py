"""Publishing a run: the adapter, its tokenizer and its card, never checkpoints or secrets. The finished run is
pushed once at the end; with `hub_strategy: every_save` written in the recipe, each saved adapter is pushed too
(`AdapterPushes`), as transformers pushes the model at every save. The strategies that push whole checkpoints
(`checkpoint`, `all_checkpoints`: optimizer state and the pickled arguments) are refused.

The Hub token is taken out of the training arguments as soon as the recipe is parsed (`take_hub_token`): the
trainer pickles its arguments into every checkpoint (`training_args.bin`), and a token there would travel with any
copy of the checkpoint. The recipe holds it privately and hands it to the one upload at the end.
"""

import logging
import os
import re

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from goft.errors import RecipeError
from goft.io.model_source import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE

PUSHED_FILES = [
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    "README.md",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "added_tokens.json",
    "generation_config.json",
]
SECRET_KEY = re.compile(r"token|secret|password|api_key", re.IGNORECASE)
TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{20,}")
REDACTED = "<redacted>"
EVERY_SAVE, END = "every_save", "end"
CHECKPOINT_STRATEGIES = ("checkpoint", "all_checkpoints")

logger = logging.getLogger(__name__)


def take_hub_token(training_args) -> str | None:
    """The token to push with (`hub_token`, else HF_TOKEN / the login cache); `hub_token` is cleared from the
    arguments so that no checkpoint or log carries it."""
    token = training_args.hub_token or get_token()
    training_args.hub_token = None
    return token


def _known_secrets() -> list[str]:
    return [
        secret
        for secret in (os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN"), get_token())
        if secret
    ]


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with every given or known Hub token (and anything shaped like one) replaced by <redacted>."""
    for secret in sorted({s for s in (*secrets, *_known_secrets()) if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return TOKEN_PATTERN.sub(REDACTED, text)


def check_push_settings(training_args, token: str | None) -> None:
    """Fail before any training when a push could not succeed at the end: no repo id, no token, a token the Hub
    rejects or that cannot write, or a Hub that cannot be reached."""
    if not training_args.push_to_hub:
        return
    if not training_args.hub_model_id:
        raise RecipeError("`push_to_hub: true` needs `hub_model_id` (owner/name of the adapter repo to create).")
    if not token:
        raise RecipeError(
            "`push_to_hub: true` but no Hub token was found: run `hf auth login`, set HF_TOKEN, or "
            "put `hub_token` in the YAML recipe."
        )
    if constants.HF_HUB_OFFLINE:
        raise RecipeError(
            "`push_to_hub: true` but the Hub is offline (HF_HUB_OFFLINE=1), so nothing could be "
            "pushed at the end. Unset HF_HUB_OFFLINE, or drop `push_to_hub` and upload later."
        )
    try:
        identity = HfApi(token=token).whoami()
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status == 401:
            raise RecipeError(
                f"The Hub at {constants.ENDPOINT} rejected the token (401 Unauthorized). Create a "
                "token with write access, then `hf auth login` or set HF_TOKEN."
            ) from None
        raise RecipeError(f"Checking the Hub token failed: {scrub(str(error), token)}") from None
    except Exception as error:  # connection refused, DNS, TLS: nothing that training would fix
        raise RecipeError(
            f"`push_to_hub: true` but the Hub at {constants.ENDPOINT} cannot be reached to check the "
            f"token ({type(error).__name__}: {scrub(str(error), token)}). Fix the connection, or drop "
            "`push_to_hub` and upload later."
        ) from None
    role = ((identity.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise RecipeError("`push_to_hub: true` but the Hub token is read-only; create one with write access.")


def push_run(folder: str, training_args, token: str, commit_message: str) -> str:
    """Create (or reuse) the repo and upload the run's public files; returns the repo URL."""
    api = HfApi(token=token)
    try:
        repo = api.create_repo(training_args.hub_model_id, private=training_args.hub_private_repo, exist_ok=True)
        api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=folder,
            allow_patterns=PUSHED_FILES,
            commit_message=commit_message,
            revision=training_args.hub_revision,
        )
    except Exception as error:
        repo_id = training_args.hub_model_id
        raise RecipeError(
            f"The run finished and is saved in {folder!r}, but pushing it to {repo_id!r} failed "
            f"({type(error).__name__}: {scrub(str(error), token)}). Upload it later with "
            f"`hf upload {repo_id} {folder}`."
        ) from None
    return str(repo)


def hub_strategy(training_args, named: bool) -> str:
    """`every_save` or `end`: how the run pushes; `end` unless the recipe writes `hub_strategy` (transformers' default
    `every_save` would push half-trained adapters that the recipe never asked for). Checkpoint strategies are
    refused."""
    strategy = str(getattr(training_args.hub_strategy, "value", training_args.hub_strategy))
    if not named:
        return END
    if strategy in CHECKPOINT_STRATEGIES:
        raise RecipeError(
            f"`hub_strategy: {strategy}` pushes whole checkpoints (optimizer state and the run's pickled arguments), "
            "which goft never publishes: write `hub_strategy: every_save` (the adapter at each save) or `end`."
        )
    return EVERY_SAVE if strategy == EVERY_SAVE else END


class AdapterPushes(TrainerCallback):
    """`hub_strategy: every_save`: each checkpoint's adapter and tokenizer (its public files) are pushed as it is
    saved, from the main process; a failed push is a warning (the run goes on, and the end's push says more)."""

    def __init__(self, training_args, token: str | None, stage: str):
        self.training_args, self.token, self.stage = training_args, token, stage

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        try:
            push_run(folder, self.training_args, self.token, f"goft {self.stage}: adapter at step {state.global_step}")
        except RecipeError as error:
            logger.warning("Pushing the adapter of step %d failed: %s", state.global_step, error)


def redact(value, key: str = ""):
    """A copy of a recipe value with anything secret replaced, for cards, logs and saved configs."""
    if key and SECRET_KEY.search(key) and value not in (None, False, ""):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value
