"""Kill -9 mid-queue, restart: every queued prompt runs, every finished one is still in history, unchanged.

`main.py serve` runs as a user runs it, in a subprocess on a free port with a temporary base directory.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .conftest import REPO, make_base, txt2img

PROMPTS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def serve(base: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "main.py", "serve", "--base-directory", str(base), "--port", str(port),
               "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_until(predicate: Any, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; server log:\n{log.read_text()[-3000:]}")


def test_kill_9_mid_queue_loses_nothing(tmp_path: Path, tiny_checkpoint: Path) -> None:
    base = make_base(tmp_path / "base", tiny_checkpoint)
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    server = serve(base, port, log)
    try:
        wait_until(lambda: call(f"{url}/prompt") is not None, 60, "the server to start", log)
        ids = [call(f"{url}/prompt", {"prompt": txt2img(seed=i, text=f"prompt {i}"), "client_id": "d"})["prompt_id"]
               for i in range(PROMPTS)]
        wait_until(lambda: len(call(f"{url}/history")) >= 3, 120, "the first prompts to finish", log)
        before = call(f"{url}/history")
        remaining = call(f"{url}/prompt")["exec_info"]["queue_remaining"]
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        assert remaining > 0, "every prompt finished before the kill: the test proved nothing"
        assert len(before) < PROMPTS

        server = serve(base, port, log)
        wait_until(lambda: call(f"{url}/prompt")["exec_info"]["queue_remaining"] == 0, 120,
                   "the queue to drain after restart", log)
        after = call(f"{url}/history")
        assert sorted(after) == sorted(ids)
        assert {entry["status"]["status_str"] for entry in after.values()} == {"success"}
        for prompt_id, entry in before.items():
            assert after[prompt_id] == entry  # finished before the kill: untouched
        for prompt_id in ids:  # each prompt wrote its own image (nothing was skipped or merged)
            image = after[prompt_id]["outputs"]["9"]["images"][0]
            assert (base / "output" / image["subfolder"] / image["filename"]).is_file()
        assert len({after[p]["outputs"]["9"]["images"][0]["filename"] for p in ids}) == PROMPTS
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
