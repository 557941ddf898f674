"""A stdlib HTTP server speaking the part of the Hub's API that ``huggingface_hub`` uploads and downloads use.

Pushes in the tests go through the real ``huggingface_hub`` client (``HF_ENDPOINT`` points here, set by
``conftest.py`` before anything imports ``huggingface_hub``). Implemented, as the client 2.x calls them:

* ``POST /api/repos/create`` (409 when the repo exists, which ``exist_ok=True`` accepts);
* ``POST /api/validate-yaml`` (the client validates README.md metadata before committing it);
* ``POST /api/models/{repo}/preupload/{rev}``: every file is ``regular`` (small files go inline, base64, in
  the commit, so no LFS/Xet server is needed), with the ``oid`` (git blob sha1) of the file already
  stored at that path so the client skips unchanged files, as the real Hub makes it do;
* ``POST /api/models/{repo}/commit/{rev}`` (NDJSON: header, file, deletedFile);
* ``POST /api/models/{repo}/branch/{branch}``;
* ``GET /api/models/{repo}[/revision/{rev}]`` (repo info, used when a commit turns out empty);
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit`` and ``ETag`` (downloads);
* ``GET /api/agent-harnesses`` (a user-agent lookup the client makes; answered 404, see ``_agents``);
* ``GET /api/organizations/{org}/overview`` (answered 404: the fake Hub hosts no organisation; see ``_organization``).

Failures are injected per endpoint: ``hub.fail["commit"] = 500`` answers that status, ``hub.delay["commit"]
= 2.0`` sleeps first (a time-out). Only ``hub.token`` is accepted for writes (401 otherwise).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

TOKEN = "hf_fake_write_token"
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES: list[tuple[str, str, re.Pattern[str]]] = [
    (method, name, re.compile(pattern))
    for method, name, pattern in [
        ("POST", "create", r"^/api/repos/create$"),
        ("POST", "validate", r"^/api/validate-yaml$"),
        ("POST", "preupload", rf"^/api/models/{_REPO}/preupload/(?P<rev>.+)$"),
        ("POST", "commit", rf"^/api/models/{_REPO}/commit/(?P<rev>.+)$"),
        ("POST", "branch", rf"^/api/models/{_REPO}/branch/(?P<rev>.+)$"),
        ("GET", "info", rf"^/api/models/{_REPO}(/revision/(?P<rev>.+))?$"),
        ("GET", "resolve", rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
        ("HEAD", "resolve", rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
        ("GET", "agents", r"^/api/agent-harnesses$"),
        ("GET", "organization", r"^/api/organizations/(?P<org>[^/]+)/overview$"),
    ]
]


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    branch: str
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, list[Commit]] = field(default_factory=dict)

    def head(self, rev: str) -> Commit | None:
        if rev in self.branches:
            return self.branches[rev][-1]
        for commits in self.branches.values():
            for commit in commits:
                if commit.oid == rev:
                    return commit
        return None


class FakeHub:
    """In-memory repos behind a threaded HTTP server on 127.0.0.1."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str = TOKEN) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.fail: dict[str, int] = {}
        self.delay: dict[str, float] = {}
        self.requests: list[tuple[str, str]] = []
        self.unrouted: list[str] = []  # calls the fake does not implement: a test should see none
        self._lock = threading.Lock()
        self._server = _QuietServer((host, port), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.repos.clear()
            self.fail.clear()
            self.delay.clear()
            self.requests.clear()
            self.unrouted.clear()

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        head = self.repos[repo_id].head(rev)
        assert head is not None, f"{repo_id} has no revision {rev}"
        return dict(head.files)

    def commits(self, repo_id: str, rev: str = "main") -> list[Commit]:
        return list(self.repos[repo_id].branches.get(rev, []))

    # ------------------------------------------------------------------------------------- handlers
    def _new_commit(self, repo: Repo, branch: str, message: str, files: dict[str, bytes]) -> Commit:
        count = sum(len(c) for c in repo.branches.values())
        oid = hashlib.sha1(f"{repo.repo_id}:{branch}:{count}:{message}".encode()).hexdigest()
        commit = Commit(oid, branch, message, files)
        repo.branches.setdefault(branch, []).append(commit)
        return commit

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        route = next(((name, m) for meth, name, pattern in _ROUTES if meth == method
                      for m in [pattern.match(path)] if m), None)
        if route is None:
            self.unrouted.append(f"{method} {path}")
            return _json(404, {"error": f"fake hub: no route for {method} {path}"})
        name, match = route
        self.requests.append((method, name))
        if name in self.delay:
            time.sleep(self.delay[name])
        if name in self.fail:
            return _json(self.fail[name], {"error": f"fake hub: injected failure on {name}"})
        groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
        writes = name in ("create", "preupload", "commit", "branch")
        if writes and headers.get("authorization") != f"Bearer {self.token}":
            return _json(401, {"error": "Invalid credentials in Authorization header"})
        with self._lock:
            return getattr(self, f"_{name}")(groups, body)

    def _create(self, groups: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        if repo_id in self.repos:
            return _json(409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"})
        repo = Repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self.repos[repo_id] = repo
        self._new_commit(repo, "main", "initial commit", {".gitattributes": b"*.safetensors filter=lfs diff=lfs\n"})
        return _json(200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate(self, groups: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        return _json(200, {"errors": [], "warnings": []})

    def _repo_and_head(self, groups: dict[str, str]) -> tuple[Repo | None, Commit | None, tuple | None]:
        repo = self.repos.get(groups["repo"])
        if repo is None:
            return None, None, _json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        head = repo.head(groups.get("rev", "main"))
        if head is None:
            return repo, None, _json(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
        return repo, head, None

    def _agents(self, groups: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        # The client looks up AI-agent harnesses for its user agent and caches a successful answer in
        # HF_HOME; answering 404 keeps tests from writing into the user's cache.
        return _json(404, {"error": "not served by the fake hub"})

    def _organization(self, groups: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        # bitsandbytes, imported online by a fresh process (the CLI push), asks the ``kernels`` package (a
        # dependency of transformers >= 5.25) for an optional CPU kernel, which first checks its publisher,
        # kernels-community. Not found, the kernel is not loaded and bitsandbytes keeps its own.
        return _json(404, {"error": f"fake hub: no organization {groups['org']!r}"})

    def _preupload(self, groups: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        _, head, error = self._repo_and_head(groups)
        if error:
            return error
        assert head is not None
        files = []
        for f in json.loads(body)["files"]:
            existing = head.files.get(f["path"])
            files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": git_blob_sha1(existing) if existing is not None else None})
        return _json(200, {"files": files, "commitOid": head.oid})

    def _commit(self, groups: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        repo, head, error = self._repo_and_head(groups)
        if error:
            return error
        assert repo is not None and head is not None
        files = dict(head.files)
        message = ""
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value["summary"]
            elif key == "file":
                assert value.get("encoding") == "base64", value
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            else:
                return _json(400, {"error": f"fake hub: unsupported commit item {key!r} (only regular files)"})
        commit = self._new_commit(repo, groups["rev"], message, files)
        return _json(200, {"commitOid": commit.oid, "commitUrl": f"{self.endpoint}/{repo.repo_id}/commit/{commit.oid}",
                           "pullRequestUrl": None})

    def _branch(self, groups: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        repo = self.repos.get(groups["repo"])
        if repo is None:
            return _json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if groups["rev"] in repo.branches:
            return _json(409, {"error": "Reference already exists"})
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        base = repo.head(start)
        assert base is not None
        self._new_commit(repo, groups["rev"], f"branch from {start}", dict(base.files))
        return _json(200, {})

    def _info(self, groups: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        repo, head, error = self._repo_and_head(groups)
        if error:
            return error
        assert repo is not None and head is not None
        return _json(200, {"id": repo.repo_id, "modelId": repo.repo_id, "sha": head.oid, "private": repo.private,
                           "siblings": [{"rfilename": f} for f in sorted(head.files)]})

    def _resolve(self, groups: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        _, head, error = self._repo_and_head(groups)
        if error:
            return error
        assert head is not None
        content = head.files.get(groups["path"])
        if content is None:
            missing = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": head.oid}
            return _json(404, {"error": "Entry not found"}, missing)
        return 200, {"X-Repo-Commit": head.oid, "ETag": f'"{git_blob_sha1(content)}"',
                     "Content-Type": "application/octet-stream"}, content

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra, payload = hub.handle(self.command, urlsplit(self.path).path, headers, body)
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_HEAD = _serve

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

        return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up makes the late reply fail with a broken pipe: expected here.
        pass


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(data).encode()
