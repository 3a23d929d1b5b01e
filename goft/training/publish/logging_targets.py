"""Where a run's logging integrations (`report_to`) write, known before training starts and recorded after it.

transformers 5 has no `logging_dir`: its TensorBoard callback writes to $TENSORBOARD_LOGGING_DIR, or else to a new
`<output_dir>/runs/<date>_<host>` folder per run. `set_log_defaults` (called before the trainer is built) sets that
variable to `<output_dir>/runs` when the user has not, so the event files land in one predictable folder.

trackio keeps one SQLite file per `project` under $TRACKIO_DIR (by default `$HF_HOME/trackio`) and stays local: it
goes online only for a Space (`trackio_space_id` or $TRACKIO_SPACE_ID) or a server ($TRACKIO_SERVER_URL). With the
Hub offline, `argument_checks.check_trackio` refuses a Space or Bucket before any work.
"""

from __future__ import annotations

import os

TENSORBOARD_ENV = "TENSORBOARD_LOGGING_DIR"
TENSORBOARD_FOLDER = "runs"
SPACE_URL = "https://huggingface.co/spaces/"

# The TENSORBOARD_LOGGING_DIR this process set for an earlier run, so that the next run (in-process, e.g. a
# comparison) gets its own default instead of taking the earlier one for the user's choice.
_set_by_goft: str | None = None


def enabled_integrations(report_to) -> list[str]:
    """The integrations `report_to` turns on, in order: "all" means every installed one, "none" none."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "all" in names:
        from transformers.integrations import get_available_reporting_integrations

        names = list(get_available_reporting_integrations())
    return list(dict.fromkeys(name for name in names if name != "none"))


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def default_tensorboard_dir(training_args) -> str:
    """`<output_dir>/runs`, absolute."""
    return os.path.join(_absolute(training_args.output_dir), TENSORBOARD_FOLDER)


def tensorboard_dir(training_args) -> str:
    """The folder TensorBoard's event files go to: $TENSORBOARD_LOGGING_DIR when set, else `<output_dir>/runs`."""
    given = os.environ.get(TENSORBOARD_ENV)
    return _absolute(given) if given else default_tensorboard_dir(training_args)


def set_log_defaults(training_args) -> None:
    """Before the trainer is built: with TensorBoard on and $TENSORBOARD_LOGGING_DIR not set by the user, point it
    at `<output_dir>/runs` (transformers reads it when it creates its TensorBoard callback)."""
    global _set_by_goft
    if "tensorboard" not in enabled_integrations(training_args.report_to):
        return
    current = os.environ.get(TENSORBOARD_ENV)
    if current and current != _set_by_goft:
        return  # the user's own choice
    _set_by_goft = os.environ[TENSORBOARD_ENV] = default_tensorboard_dir(training_args)


def trackio_remote(training_args) -> tuple[str | None, str | None]:
    """(Space id, server URL without its write token) trackio would log to, as trackio resolves them; (None, None)
    when it logs locally."""
    from trackio.utils import parse_trackio_server_url, resolve_space_id_and_server_url

    space, server = resolve_space_id_and_server_url(getattr(training_args, "trackio_space_id", None), None)
    if server:
        server = parse_trackio_server_url(server)[0]  # never record the token
    return space, server


def trackio_destination(training_args) -> str:
    """The Space's address, the server's, or (locally) the absolute path of the project's SQLite file."""
    space, server = trackio_remote(training_args)
    if space:
        return SPACE_URL + space if "/" in space else f"the Hugging Face Space {space!r} of your Hub account"
    if server:
        return f"trackio server {server}"
    from trackio.sqlite_storage import SQLiteStorage

    return _absolute(str(SQLiteStorage.get_project_db_path(training_args.project)))


def log_destinations(training_args) -> dict[str, str]:
    """Integration name -> where it writes (an absolute path, or a description for remote or unknown places)."""
    found = {}
    for name in enabled_integrations(training_args.report_to):
        if name == "tensorboard":
            found[name] = tensorboard_dir(training_args)
        elif name == "trackio":
            found[name] = trackio_destination(training_args)
        else:
            found[name] = f"wherever {name} is configured to log (see its own settings)"
    return found
