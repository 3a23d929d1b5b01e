"""The offline Hub stand-in (tests/support/hub_server.py) works with the real ``huggingface_hub`` client.

The client reads HF_ENDPOINT / HF_HUB_OFFLINE when it is imported (and conftest.py sets
HF_HUB_OFFLINE=1 in this process), so each client runs in a subprocess with its own environment
while the server runs in a thread of the test process.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.support.hub_server import LocalHub

pytestmark = pytest.mark.slow  # every client runs in a process of its own
REPO = "someuser/some-repo"
TOKEN = "hf_fake_token_for_tests"


@pytest.fixture
def hub(tmp_path):
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


def run_client(hub: LocalHub, tmp_path, code: str, **extra_env: str) -> str:
    """Run ``code`` in a fresh interpreter pointed at ``hub``; return its stdout (fails the test on error)."""
    # Drop HF_TOKEN, HF_HUB_CACHE, ...: no real token or cache may leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_HUB_"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HUB_OFFLINE="0",
        TRANSFORMERS_OFFLINE="0",
        HF_HOME=str(tmp_path / "hf_home"),  # cache and token file stay inside tmp_path
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1,localhost",  # never send loopback traffic through a proxy
        no_proxy="127.0.0.1,localhost",
        **extra_env,
    )
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )
    report = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\nunhandled requests: {hub.unhandled}"
    assert proc.returncode == 0, f"client failed\n{report}"
    return proc.stdout


def make_folder(path):
    path.mkdir()
    files = {
        "README.md": b"---\nlicense: mit\n---\n# tiny adapter\n",
        "adapter_config.json": b'{"peft_type": "LORA", "r": 8}',
        "adapter_model.safetensors": os.urandom(300_000),  # binary, not valid UTF-8
    }
    for name, data in files.items():
        (path / name).write_bytes(data)
    (path / "optimizer.pt").write_bytes(b"excluded by allow_patterns")
    (path / "notes.tmp").write_bytes(b"excluded by ignore_patterns")
    return files


@pytest.mark.parametrize("disable_xet", ["0", "1"])
def test_push_then_download_roundtrip(hub, tmp_path, disable_xet):
    folder = tmp_path / "folder"
    expected = make_folder(folder)
    out = run_client(
        hub,
        tmp_path,
        f"""
        import pathlib
        from huggingface_hub import HfApi, hf_hub_download

        api = HfApi(token={TOKEN!r})
        api.create_repo({REPO!r}, private=False, exist_ok=True)
        api.create_repo({REPO!r}, private=False, exist_ok=True)  # already exists: still fine
        api.upload_folder(
            repo_id={REPO!r},
            folder_path={str(folder)!r},
            allow_patterns=["*.md", "*.json", "*.safetensors", "*.tmp"],
            ignore_patterns=["*.tmp"],
            commit_message="Upload adapter",
        )
        for name in {sorted(expected)!r}:
            local = hf_hub_download({REPO!r}, name)
            assert pathlib.Path(local).read_bytes() == pathlib.Path({str(folder)!r}, name).read_bytes(), name
        print("files:", sorted(api.list_repo_files({REPO!r})))
        """,
        HF_HUB_DISABLE_XET=disable_xet,
    )
    assert f"files: {sorted(expected)}" in out
    assert hub.files(REPO) == expected  # what landed on disk is exactly what was pushed
    on_disk = tmp_path / "hub" / REPO / "adapter_model.safetensors"
    assert on_disk.read_bytes() == expected["adapter_model.safetensors"]
    write_auth = {auth for method, path, auth in hub.requests if method == "POST"}
    assert write_auth == {f"Bearer {TOKEN}"}
    assert any(path.endswith("/commit/main") for _, path, _ in hub.requests)
    assert hub.unhandled == []


def test_missing_entries_raise_client_errors(hub, tmp_path):
    out = run_client(
        hub,
        tmp_path,
        f"""
        import huggingface_hub
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

        api = HfApi(token={TOKEN!r})
        api.create_repo({REPO!r})
        api.upload_file(path_or_fileobj=b"{{}}", path_in_repo="config.json", repo_id={REPO!r})
        try:
            hf_hub_download({REPO!r}, "missing.json")
        except EntryNotFoundError as e:
            print("missing file:", type(e).__name__, e.response.status_code)
        assert api.file_exists({REPO!r}, "config.json") and not api.file_exists({REPO!r}, "missing.json")
        try:
            hf_hub_download("someuser/no-such-repo", "config.json")
        except RepositoryNotFoundError as e:
            print("missing repo:", type(e).__name__)
        try:
            HfApi(token=False).create_repo("someuser/anonymous")
        except HfHubHTTPError as e:
            print("no token:", e.response.status_code)
        """,
    )
    assert "missing file: RemoteEntryNotFoundError 404" in out
    assert "missing repo: RepositoryNotFoundError" in out
    assert "no token: 401" in out
    assert hub.files(REPO) == {"config.json": b"{}"}
    assert not (tmp_path / "hub" / "someuser" / "anonymous").exists()
    assert hub.unhandled == []
