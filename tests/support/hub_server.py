"""Offline, in-process stand-in for the Hugging Face Hub HTTP API (model repos only).

Enough of the API for the real ``huggingface_hub`` client (written against 2.4.0), and for
``transformers`` / ``peft`` loading through it, to push a folder and load it back without the
internet::

    with LocalHub(tmp_path / "hub") as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
        subprocess.run([sys.executable, "-c", script], env=env, check=True)
        hub.files("someuser/some-repo")   # {path: bytes} of what was pushed

``HF_ENDPOINT`` (and ``HF_HUB_OFFLINE=0``) must be set before ``huggingface_hub`` is imported,
because the client reads them into constants at import time; hence a subprocess.

Endpoints served (``{repo}`` is ``owner/name``, ``{rev}`` is ``main`` or a commit sha we issued):

    POST /api/repos/create                        create a repo (409 if it exists -> exist_ok works)
    POST /api/validate-yaml                       README.md metadata check: always valid
    GET  /api/whoami-v2                           a fake user
    GET  /api/agent-harnesses                     empty registry (user-agent telemetry helper)
    GET  /api/models/{repo}[/revision/{rev}]      model_info / repo_info (sha + siblings)
    GET  /api/models/{repo}/tree/{rev}[/{path}]   list_repo_tree / list_repo_files (one page)
    POST /api/models/{repo}/paths-info/{rev}      get_paths_info
    POST /api/models/{repo}/preupload/{rev}       answers uploadMode "regular" for every file
    POST /api/models/{repo}/commit/{rev}          NDJSON commit: inline base64 files, deletions
    HEAD/GET /{repo}/resolve/{rev}/{path}         hf_hub_download, file_exists, get_hf_file_metadata

Because preupload always answers "regular", file contents arrive inline (base64) in the commit
payload and neither the LFS batch API nor Xet storage is ever contacted; no environment variable
is needed for that (with ``hf_xet`` installed, ``upload_folder`` takes its "pipelined" path, but
that path only opens Xet uploads for files that preupload marked "lfs"). Setting
``HF_HUB_DISABLE_XET=1`` also works (then ``upload_folder`` falls back to a single
``create_commit``). Downloads carry no ``X-Xet-Hash`` header, so they are plain HTTP GETs.
Commits with ``lfsFile`` entries are rejected with 400.

Error responses carry the ``X-Error-Code`` header the client maps to exception classes:
``RepoNotFound`` -> RepositoryNotFoundError, ``RevisionNotFound`` -> RevisionNotFoundError,
``EntryNotFound`` -> RemoteEntryNotFoundError (a subclass of EntryNotFoundError).

Simplifications: a single branch ("main"); every commit overwrites files in place, so any commit
sha we ever issued resolves to the *current* files. Write endpoints require an
``Authorization: Bearer ...`` header (any token is accepted); reads do not. Files live on disk
under ``root/owner/name/<path>``. Every request is recorded in ``requests`` as
``(method, path, authorization)``; requests no route matched also go to ``unhandled``. Tokens passed as
``rejected_tokens`` get 401 on every route, like a revoked token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pathlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

# owner/name: the characters the Hub accepts in repo ids.
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
# Path segments are matched while still URL-encoded, so "/" inside a quoted revision stays one segment.
_ROUTES = [
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", r"/api/whoami-v2", "whoami"),
    ("GET", r"/api/agent-harnesses", "agent_harnesses"),
    ("GET", rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "model_info"),
    ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("POST", rf"/api/models/{_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
    ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]
_WRITE_ROUTES = {"create_repo", "preupload", "commit"}


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub returns as ``oid`` / ETag for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    """Raised by a route to answer with an error status and an ``X-Error-Code`` header."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class LocalHub:
    """Context manager running the fake Hub on an ephemeral loopback port in a daemon thread."""

    def __init__(self, root: pathlib.Path, rejected_tokens: tuple[str, ...] = ()):
        self.root = pathlib.Path(root)
        self.rejected_tokens = set(rejected_tokens)  # requests carrying these get 401, as revoked tokens do
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = ""  # set in __enter__
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization header)
        self.unhandled: list[tuple[str, str]] = []  # (method, path) that no route matched
        self._commits: dict[str, list[str]] = {}  # repo_id -> commit shas, oldest first
        self._lock = threading.Lock()  # serialises all repo state changes and reads
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public helpers

    def files(self, repo_id: str) -> dict[str, bytes]:
        """Current files of a repo, ``{path_in_repo: content}``."""
        with self._lock:
            return {path: p.read_bytes() for path, p in self._walk(repo_id).items()}

    def __enter__(self) -> LocalHub:
        handler = type("Handler", (_Handler,), {"hub": self})  # the handler class reaches us via `self.hub`
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: the OS picks a free port
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # ------------------------------------------------------------------ repo state (call with _lock held)

    def _repo_dir(self, repo_id: str) -> pathlib.Path:
        if any(part in (".", "..") for part in repo_id.split("/")):
            raise HubError(400, None, f"invalid repo id {repo_id!r}")
        return self.root / repo_id

    def _exists(self, repo_id: str) -> bool:
        return self._repo_dir(repo_id).is_dir()

    def _head(self, repo_id: str) -> str:
        if not self._exists(repo_id):
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        # A repo left on disk by an earlier LocalHub on the same root gets a deterministic first sha.
        commits = self._commits.setdefault(repo_id, [hashlib.sha1(f"init:{repo_id}".encode()).hexdigest()])
        return commits[-1]

    def _resolve_rev(self, repo_id: str, rev: str) -> str:
        """Commit sha for ``rev`` ("main" or a sha we issued); raises RepoNotFound / RevisionNotFound."""
        head = self._head(repo_id)
        if rev == "main" or rev in self._commits[repo_id]:
            return head
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    def _walk(self, repo_id: str) -> dict[str, pathlib.Path]:
        base = self._repo_dir(repo_id)
        if not base.is_dir():
            return {}
        return {p.relative_to(base).as_posix(): p for p in sorted(base.rglob("*")) if p.is_file()}

    def _entries(self, repo_id: str, prefix: str, recursive: bool) -> list[dict]:
        """Tree entries (files and directories) under ``prefix``, in the Hub's JSON format."""
        files = self._walk(repo_id)
        if prefix and prefix not in files and not any(f.startswith(prefix + "/") for f in files):
            raise HubError(404, "EntryNotFound", f"{prefix} does not exist on main")
        start = prefix + "/" if prefix else ""
        entries: dict[str, dict] = {}
        for path in files:
            if not path.startswith(start):
                continue
            parts = path[len(start) :].split("/")
            # Directories between `prefix` and the file (only the first level unless recursive).
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = start + "/".join(parts[:depth])
                entries.setdefault(folder, self._folder_entry(folder))
            if recursive or len(parts) == 1:
                entries[path] = self._file_entry(path, files[path].read_bytes())
        return list(entries.values())

    @staticmethod
    def _file_entry(path: str, data: bytes) -> dict:
        return {"type": "file", "path": path, "oid": git_blob_sha1(data), "size": len(data)}

    @staticmethod
    def _folder_entry(path: str) -> dict:
        # A stable fake tree id; nothing in the client checks it.
        return {"type": "directory", "path": path, "oid": hashlib.sha1(f"tree:{path}".encode()).hexdigest(), "size": 0}

    # ------------------------------------------------------------------ routes
    # Each takes (match groups, query dict, body bytes, auth header) and returns (status, json or bytes, headers).

    def create_repo(self, g, query, body, auth):
        payload = json.loads(body or b"{}")
        if payload.get("type") not in (None, "model"):
            raise HubError(400, None, "LocalHub only serves model repos")
        if not payload.get("organization"):
            raise HubError(400, None, "repo id must be 'owner/name'")
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.url}/{repo_id}"
        if self._exists(repo_id):
            # The client turns a 409 into success when exist_ok=True.
            return 409, {"error": "You already created this model repo", "url": url}, {}
        self._repo_dir(repo_id).mkdir(parents=True)
        self._head(repo_id)  # issue the initial commit sha
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def validate_yaml(self, g, query, body, auth):
        return 200, {"errors": [], "warnings": []}, {}

    def whoami(self, g, query, body, auth):
        return 200, {"type": "user", "name": "someuser", "fullname": "Some User", "orgs": []}, {}

    def agent_harnesses(self, g, query, body, auth):
        # Registry the client fetches for its user-agent string (unless HF_HUB_DISABLE_TELEMETRY=1): empty.
        return 200, {"standardEnvVars": [], "harnesses": {}}, {}

    def model_info(self, g, query, body, auth):
        repo_id = g["repo"]
        sha = self._resolve_rev(repo_id, unquote(g["rev"] or "main"))
        siblings = [
            {"rfilename": path, "size": p.stat().st_size, "blobId": git_blob_sha1(p.read_bytes())}
            for path, p in self._walk(repo_id).items()
        ]
        info = {
            "_id": repo_id, "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": sha,
            "private": False, "gated": False, "disabled": False, "tags": [], "siblings": siblings,
        }  # fmt: skip
        return 200, info, {}

    def tree(self, g, query, body, auth):
        repo_id = g["repo"]
        self._resolve_rev(repo_id, unquote(g["rev"]))
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        return 200, self._entries(repo_id, unquote(g["path"] or "").strip("/"), recursive), {}

    def paths_info(self, g, query, body, auth):
        repo_id = g["repo"]
        self._resolve_rev(repo_id, unquote(g["rev"]))
        form = parse_qs(body.decode()) if body else {}
        files = self._walk(repo_id)
        out = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in files:
                out.append(self._file_entry(path, files[path].read_bytes()))
            elif any(f.startswith(path + "/") for f in files):
                out.append(self._folder_entry(path))
        return 200, out, {}

    def preupload(self, g, query, body, auth):
        repo_id = g["repo"]
        self._resolve_rev(repo_id, unquote(g["rev"]))
        files = self._walk(repo_id)
        answer = []
        for f in json.loads(body)["files"]:
            # "oid" of the file already on the Hub lets the client skip unchanged files.
            remote = files.get(f["path"])
            oid = git_blob_sha1(remote.read_bytes()) if remote is not None else None
            answer.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        return 200, {"files": answer, "commitOid": self._head(repo_id)}, {}

    def commit(self, g, query, body, auth):
        repo_id = g["repo"]
        parent = self._resolve_rev(repo_id, unquote(g["rev"]))
        base = self._repo_dir(repo_id)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        # Validate everything first, so a rejected commit changes nothing.
        for item in lines:
            if item["key"] == "lfsFile":
                raise HubError(400, None, "LocalHub does not store LFS files; preupload asks for 'regular' mode")
            if item["key"] not in ("header", "file", "deletedFile", "deletedFolder"):
                raise HubError(400, None, f"unsupported commit operation {item['key']!r}")
            path = item["value"].get("path", "")
            if item["key"] != "header" and (path.startswith("/") or ".." in path.split("/")):
                raise HubError(400, None, f"invalid path {path!r}")
        summary = ""
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                content = value["content"]
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                target = base / value["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            elif key == "deletedFile":
                (base / value["path"]).unlink(missing_ok=True)
            elif key == "deletedFolder":
                folder = base / value["path"]
                for p in sorted(folder.rglob("*"), reverse=True):  # children before their parents
                    p.unlink() if p.is_file() else p.rmdir()
                if folder.is_dir() and folder != base:
                    folder.rmdir()
        digest = hashlib.sha1(parent.encode() + summary.encode())
        for path, p in self._walk(repo_id).items():
            digest.update(path.encode() + b"\0" + git_blob_sha1(p.read_bytes()).encode())
        sha = digest.hexdigest()
        self._commits[repo_id].append(sha)
        commit_url = f"{self.url}/{repo_id}/commit/{sha}"
        return 200, {"commitUrl": commit_url, "commitOid": sha, "pullRequestUrl": None}, {}

    def resolve(self, g, query, body, auth):
        repo_id = g["repo"]
        sha = self._resolve_rev(repo_id, unquote(g["rev"]))
        path = unquote(g["path"])
        target = self._walk(repo_id).get(path)
        if target is None:
            # X-Repo-Commit on the 404 lets the client cache the non-existence of optional files.
            raise HubError(404, "EntryNotFound", f"{path} does not exist on main", {"X-Repo-Commit": sha})
        data = target.read_bytes()
        etag = git_blob_sha1(data)
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": sha, "Content-Type": "application/octet-stream"}
        return 200, data, headers


class _Handler(BaseHTTPRequestHandler):
    """Dispatches requests to the ``LocalHub`` routes; HTTP/1.1 with keep-alive (httpx pools connections)."""

    protocol_version = "HTTP/1.1"
    hub: LocalHub  # set on a per-server subclass

    def log_message(self, format, *args):  # keep pytest output quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()  # CRLF after each chunk
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self) -> None:
        hub = self.hub
        auth = self.headers.get("Authorization")
        url = urlsplit(self.path)
        with hub._lock:
            hub.requests.append((self.command, self.path, auth))
        body = self._read_body() if self.command in ("POST", "PUT") else b""
        headers: dict[str, str] = {}
        try:
            for method, pattern, name in _ROUTES:  # noqa: B007  (`name` is the route found, used below)
                match = re.fullmatch(pattern, url.path)
                if match and method == self.command:
                    break
            else:
                with hub._lock:
                    hub.unhandled.append((self.command, self.path))
                raise HubError(404, None, f"LocalHub: no route for {self.command} {url.path}")
            if (auth or "").removeprefix("Bearer ") in hub.rejected_tokens:
                raise HubError(401, None, "Invalid credentials in Authorization header")
            if name in _WRITE_ROUTES and not (auth or "").startswith("Bearer "):
                raise HubError(401, None, "Invalid credentials in Authorization header")
            with hub._lock:
                status, payload, headers = getattr(hub, name)(match.groupdict(), parse_qs(url.query), body, auth)
        except HubError as e:
            status, payload, headers = e.status, {"error": e.message}, dict(e.headers)
            if e.code:
                headers["X-Error-Code"] = e.code
            headers["X-Error-Message"] = e.message
        except Exception as e:  # a bug in the stand-in: answer 500 instead of hanging the client
            status, payload, headers = 500, {"error": f"LocalHub internal error: {e!r}"}, {}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if not isinstance(payload, bytes):
            headers.setdefault("Content-Type", "application/json")
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))  # HEAD too: the client reads the size from it
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch
