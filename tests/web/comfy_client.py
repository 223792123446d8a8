"""A ComfyUI API client written only from ComfyUI's documented API, the way its `websockets_api_example.py` works.

It imports nothing from Sumi: plain `urllib` for HTTP and a small RFC 6455 websocket client on a stdlib socket,
as third-party scripts do. The documented behaviours it relies on:

  * `GET /ws?clientId=ID`: a websocket of JSON text frames `{type, data}` (binary frames are previews and are
    skipped); the first message is `status`, and execution events go to the client that submitted the prompt.
  * `POST /prompt` with `{prompt, client_id[, prompt_id]}` → 200 `{prompt_id, number, node_errors}`.
  * the "done" signal: an `executing` message whose `data.node` is null and `data.prompt_id` is the prompt's.
  * `execution_interrupted` `{prompt_id, node_id, ...}` after `POST /interrupt` (body optional).
  * `GET /history/{prompt_id}` → `{prompt_id: {prompt, outputs: {node_id: {images: [{filename, subfolder,
    type}]}}, status: {status_str, completed, messages}}}`.
  * `GET /view?filename=&subfolder=&type=` → the file's bytes.
  * `GET /object_info` → `{ClassName: {input: {required: {name: [type_or_options, opts]}}, ...}}`, a combo
    being `[[options...], {...}]` or `["COMBO", {options: [...]}]`.
  * `POST /upload/image` multipart (`image` file, `overwrite`, `type`, `subfolder`) → `{name, subfolder, type}`.
  * `GET /queue` → `{queue_running: [...], queue_pending: [...]}`; `GET /system_stats` answers once it is up.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import urllib.parse
import urllib.request
import uuid
from typing import Any

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Loopback traffic must never go through a proxy configured in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class WebSocket:
    """The smallest RFC 6455 client a script needs: connect, recv() text or bytes, send text, answer pings."""

    def __init__(self, host: str, port: int, path: str, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self._buf = b""
        while b"\r\n\r\n" not in self._buf:
            self._fill()
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise ConnectionError(f"websocket upgrade refused: {lines[0]}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise ConnectionError("bad Sec-WebSocket-Accept")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("websocket closed by the server")
        self._buf += chunk

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)  # client frames are always masked
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str | bytes:
        """The next complete message: str for text, bytes for binary (fragments joined; pings answered)."""
        message, kind = b"", None
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else b""
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the server")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x1, 0x2):
                kind = opcode
            message += payload
            if b0 & 0x80:
                return message.decode() if kind == 0x1 else message

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def close(self) -> None:
        try:
            self._send_frame(0x8, struct.pack(">H", 1000))
        except OSError:
            pass
        self.sock.close()


class ComfyClient:
    """`websockets_api_example.py` as a class: queue_prompt, get_image, get_history, get_images(ws, prompt)."""

    def __init__(self, server_address: str, client_id: str | None = None) -> None:
        self.server_address = server_address  # "host:port"
        self.client_id = client_id or str(uuid.uuid4())

    # -- HTTP ----------------------------------------------------------------------------------------------

    def _url(self, path: str, query: dict[str, Any] | None = None) -> str:
        return f"http://{self.server_address}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")

    def _get(self, path: str, query: dict[str, Any] | None = None) -> bytes:
        with _OPENER.open(self._url(path, query), timeout=60) as response:
            return response.read()

    def _post(self, path: str, body: bytes | None, content_type: str = "application/json") -> bytes:
        request = urllib.request.Request(self._url(path), data=body if body is not None else b"",
                                         headers={"Content-Type": content_type}, method="POST")
        with _OPENER.open(request, timeout=60) as response:
            return response.read()

    def queue_prompt(self, prompt: dict[str, Any], prompt_id: str | None = None) -> dict[str, Any]:
        """POST /prompt; returns `{prompt_id, number, node_errors}`."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id}
        if prompt_id is not None:
            body["prompt_id"] = prompt_id
        return json.loads(self._post("/prompt", json.dumps(body).encode()))

    def get_image(self, filename: str, subfolder: str, folder_type: str) -> bytes:
        return self._get("/view", {"filename": filename, "subfolder": subfolder, "type": folder_type})

    def get_history(self, prompt_id: str) -> dict[str, Any]:
        return json.loads(self._get(f"/history/{prompt_id}"))

    def get_object_info(self) -> dict[str, Any]:
        return json.loads(self._get("/object_info"))

    def get_queue(self) -> dict[str, Any]:
        return json.loads(self._get("/queue"))

    def system_stats(self) -> dict[str, Any]:
        return json.loads(self._get("/system_stats"))

    def interrupt(self) -> None:
        self._post("/interrupt", None)

    def upload_image(self, data: bytes, filename: str, folder_type: str = "input", overwrite: bool = True,
                     subfolder: str = "") -> dict[str, Any]:
        """POST /upload/image as multipart/form-data; returns `{name, subfolder, type}`."""
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in (("overwrite", "true" if overwrite else "false"), ("type", folder_type),
                            ("subfolder", subfolder)):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                     "Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        return json.loads(self._post("/upload/image", b"".join(parts), f"multipart/form-data; boundary={boundary}"))

    # -- websocket -----------------------------------------------------------------------------------------

    def connect(self) -> WebSocket:
        """Open /ws?clientId=… (the server's first message, `status`, is left for the caller to read)."""
        host, _, port = self.server_address.rpartition(":")
        return WebSocket(host, int(port), f"/ws?clientId={urllib.parse.quote(self.client_id)}")

    @staticmethod
    def wait_for(ws: WebSocket, prompt_id: str) -> list[dict[str, Any]]:
        """This prompt's messages, up to and including the `executing {node: null}` that ends it."""
        messages = []
        while True:
            out = ws.recv()
            if not isinstance(out, str):
                continue  # previews are binary data
            message = json.loads(out)
            if (message.get("data") or {}).get("prompt_id") != prompt_id:
                continue
            messages.append(message)
            if message["type"] == "executing" and message["data"]["node"] is None:
                return messages  # execution is done

    def get_images(self, ws: WebSocket, prompt: dict[str, Any]) -> dict[str, list[bytes]]:
        """Queue a prompt, wait for it to finish, then fetch every image its output nodes produced, per node."""
        prompt_id = self.queue_prompt(prompt)["prompt_id"]
        self.wait_for(ws, prompt_id)
        history = self.get_history(prompt_id)[prompt_id]
        output_images = {}
        for node_id, node_output in history["outputs"].items():
            output_images[node_id] = [self.get_image(image["filename"], image["subfolder"], image["type"])
                                      for image in node_output.get("images", [])]
        return output_images


def combo_options(spec: list[Any]) -> list[Any]:
    """The options of an /object_info combo input, in either documented shape."""
    first = spec[0]
    if isinstance(first, list):
        return first
    if first == "COMBO" and len(spec) > 1:
        return list(spec[1].get("options", []))
    return []
