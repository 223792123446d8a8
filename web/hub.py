"""The websocket side: `/ws?clientId=`, and delivering worker events to the right clients in order.

Events arrive on the worker thread; `post` hands them to the event loop with `call_soon_threadsafe`, and
one pump task routes them, in arrival order, into each target client's own bounded send queue, drained by
that client's sender task. A client that stops reading therefore delays nobody else: its queue fills, and
once it holds more than MAX_QUEUED messages or MAX_QUEUED_BYTES it is disconnected (it can reconnect and
read the history). `status` goes to every client, with the queue count read when it is routed (the
dispatcher posts only a marker, so an older count can never follow a newer one). `execution_interrupted`
goes to the client that submitted the prompt, or to every client when the prompt gave no client_id
(ComfyUI's rule for its broadcast events); other execution events go only to the submitting client (none
when it gave no client_id).

`preview` events become binary frames: PREVIEW_IMAGE (type 1: format, JPEG) or, for a client whose first
message was `feature_flags` with `supports_preview_metadata`, PREVIEW_IMAGE_WITH_METADATA (type 4: length of a
JSON blob naming the node and prompt, the JSON, the JPEG). Previews exist only for prompts whose client asked
for them (see `Hub.preview_choice`): a client that collects binary frames as its outputs never gets one
it did not ask for.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import struct
import uuid
from typing import Any

from aiohttp import WSMsgType, web

from executor.runner import Event

log = logging.getLogger("sumi.web")
BROADCAST = ("status",)
TO_SUBMITTER_OR_ALL = ("execution_interrupted",)
PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA = 1, 4  # ComfyUI's binary frame types
JPEG, PNG = 1, 2  # ComfyUI's image format codes in PREVIEW_IMAGE frames
PREVIEW_SIZE = 512
MAX_QUEUED = 2048  # messages waiting for one client before it counts as stuck
MAX_QUEUED_BYTES = 32 * 1024 * 1024
CLOSE_TIMEOUT = 2.0  # seconds a stuck client's close may take before its connection is cut
PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")  # extra_data.preview_method values ("default": unset)


class Client:
    """One websocket with its send queue; `offer` never waits, `run` sends in order."""

    def __init__(self, sid: str, ws: web.WebSocketResponse, transport: Any = None) -> None:
        self.sid = sid
        self.ws = ws
        self.transport = transport
        self.features: dict[str, Any] = {}
        self.queue: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.queued_bytes = 0
        self.task: asyncio.Task[None] | None = None

    def offer(self, message: str | bytes, max_queued: int, max_bytes: int) -> bool:
        """Queue a message; False when the client is too far behind (the message is not queued)."""
        if self.queue.qsize() >= max_queued or self.queued_bytes + len(message) > max_bytes:
            return False
        self.queue.put_nowait(message)
        self.queued_bytes += len(message)
        return True

    async def run(self) -> None:
        while True:
            message = await self.queue.get()
            try:
                if isinstance(message, bytes):
                    await self.ws.send_bytes(message)
                else:
                    await self.ws.send_str(message)
            except (ConnectionError, RuntimeError):
                pass  # a client that went away; its handler removes it
            finally:
                self.queued_bytes -= len(message)
                self.queue.task_done()


class Hub:
    def __init__(self, dispatcher: Any, server_features: dict[str, Any], *, preview_method: str | None = None,
                 max_queued: int = MAX_QUEUED, max_queued_bytes: int = MAX_QUEUED_BYTES) -> None:
        self.dispatcher = dispatcher
        self.features = server_features
        self.preview_method = preview_method  # the server's --preview-method when given explicitly
        self.max_queued, self.max_queued_bytes = max_queued, max_queued_bytes
        self.clients: dict[str, Client] = {}
        self.dropped: list[str] = []  # ids of clients disconnected for falling behind (newest last)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: asyncio.Queue[tuple[Event, str | None]] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue()
        self._pump = asyncio.create_task(self._run_pump())

    async def close_sockets(self) -> None:
        """On shutdown (and stop): a websocket is a request that never ends, and the server waits for open
        requests; closed all at once, since a client that has gone away never answers the close frame."""
        async def close(client: Client) -> None:
            self._detach(client)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.ws.close(code=1001, message=b"server shutdown"), CLOSE_TIMEOUT)

        await asyncio.gather(*(close(client) for client in list(self.clients.values())))

    async def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        await self.close_sockets()

    def post(self, event: Event, client_id: str | None) -> None:
        """Thread-safe: queue an event for delivery (dropped once the loop has closed)."""
        loop, outbox = self._loop, self._outbox
        if loop is None or outbox is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(outbox.put_nowait, (event, client_id))
        except RuntimeError:
            pass  # the loop closed between the check and the call: nobody is listening

    async def _run_pump(self) -> None:
        assert self._outbox is not None
        while True:
            event, client_id = await self._outbox.get()
            try:
                await self.deliver(event, client_id)
            except Exception:
                if event.type != "logs":  # never log about failing to deliver log lines
                    log.exception("could not deliver %s", event.type)

    # -- who gets what -----------------------------------------------------------------------------------

    def preview_choice(self, extra_data: dict[str, Any]) -> bool | str:
        """Whether a prompt's run computes previews, and which kind: its `extra_data.preview_method` when set
        (not "default"; the kind it names), else the server's --preview-method when given, else whether the
        submitting client announced it can tell previews apart (`supports_preview_metadata` in its feature
        flags; then the server's kind). False: none; True: the server's kind; a name: that kind."""
        method = extra_data.get("preview_method")
        if isinstance(method, str) and method in PREVIEW_METHODS:
            return False if method == "none" else method
        if self.preview_method is not None:
            return self.preview_method != "none"
        client = self.clients.get(str(extra_data.get("client_id") or ""))
        return bool(client and client.features.get("supports_preview_metadata"))

    def _targets(self, event: Event, client_id: str | None) -> list[Client]:
        if event.type in BROADCAST or (event.type in TO_SUBMITTER_OR_ALL and not client_id):
            return list(self.clients.values())
        client = self.clients.get(client_id) if client_id else None
        return [client] if client is not None else []

    async def deliver(self, event: Event, client_id: str | None) -> None:
        """Route one event into its targets' send queues (never waits on a client)."""
        targets = self._targets(event, client_id)
        if not targets:
            return
        if event.type == "preview":
            jpeg = await asyncio.to_thread(encode_preview, event.data.get("image"))
            if jpeg is None:
                return
            metadata = preview_metadata(event.data)
            for client in targets:
                with_metadata = client.features.get("supports_preview_metadata")
                self._offer(client, preview_frame_from_jpeg(jpeg, metadata if with_metadata else None))
            return
        if event.type == "binary_image":  # an output image (SaveImageWebsocket): PNG, full size
            png = await asyncio.to_thread(encode_png, event.data.get("image"))
            if png is None:
                return
            metadata = {**preview_metadata(event.data), "image_type": "image/png"}
            for client in targets:
                with_metadata = client.features.get("supports_preview_metadata")
                self._offer(client, image_frame(png, PNG, metadata if with_metadata else None))
            return
        data = event.data
        if event.type == "status":  # a marker: the count as it is now, not as it was when posted
            data = await asyncio.to_thread(self.status_data)
        text = json.dumps({"type": event.type, "data": data}, default=str)
        for client in targets:
            self._offer(client, text)

    def _offer(self, client: Client, message: str | bytes) -> None:
        if self.clients.get(client.sid) is not client:
            return  # already dropped or replaced
        if not client.offer(message, self.max_queued, self.max_queued_bytes):
            log.warning("websocket client %s fell %d messages behind: disconnecting it", client.sid,
                        client.queue.qsize())
            self.dropped.append(client.sid)
            self._detach(client)
            self._spawn(self._close_or_cut(client))

    def _detach(self, client: Client) -> None:
        if self.clients.get(client.sid) is client:
            del self.clients[client.sid]
        if client.task is not None:
            client.task.cancel()

    async def _close_or_cut(self, client: Client) -> None:
        """Close a dropped client politely, or cut its connection if even that is stuck."""
        try:
            await asyncio.wait_for(client.ws.close(code=1013, message=b"too far behind"), CLOSE_TIMEOUT)
        except Exception:
            if client.transport is not None:
                client.transport.abort()

    async def drain(self) -> None:
        """Wait until every queued message has been sent (tests; shutdown)."""
        await asyncio.gather(*(c.queue.join() for c in list(self.clients.values())))

    def status_data(self, sid: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": self.dispatcher.queue_remaining()}}}
        if sid is not None:
            data["sid"] = sid
        return data

    async def attach(self, client: Client) -> Client:
        """Register a connected client (a reconnecting tab takes its id over) and start its sender."""
        previous = self.clients.get(client.sid)
        if previous is not None:
            self._detach(previous)
            self._spawn(previous.ws.close())
        self.clients[client.sid] = client
        client.task = asyncio.get_running_loop().create_task(client.run())
        return client

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        # The greeting goes first in the queue, so no event can overtake it.
        client = Client(sid, ws, request.transport)
        client.offer(json.dumps({"type": "status", "data": self.status_data(sid)}), self.max_queued,
                     self.max_queued_bytes)
        running = self.dispatcher.running_node()
        if running is not None and running[1] == sid and running[2] is not None:
            client.offer(json.dumps({"type": "executing", "data": {
                "node": running[2], "display_node": running[2], "prompt_id": running[0]}}),
                self.max_queued, self.max_queued_bytes)
        await self.attach(client)
        try:
            first = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                if first:
                    self._handshake(client, msg.data)
                first = False
        finally:
            self._detach(client)
        return ws

    def _handshake(self, client: Client, text: str) -> None:
        """A client's optional first message announces its features; the server answers with its own."""
        try:
            message = json.loads(text)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("type") == "feature_flags":
            data = message.get("data")
            client.features = data if isinstance(data, dict) else {}
            self._offer(client, json.dumps({"type": "feature_flags", "data": self.features}))


def preview_metadata(data: dict[str, Any]) -> dict[str, Any]:
    """The JSON of a PREVIEW_IMAGE_WITH_METADATA frame, from a `preview` event's data."""
    node = data.get("node")
    return {"node_id": node, "prompt_id": data.get("prompt_id"), "display_node_id": data.get("display_node", node),
            "parent_node_id": data.get("parent_node"), "real_node_id": node, "image_type": "image/jpeg"}


def encode_preview(image: Any) -> bytes | None:
    """A PIL image or an IMAGE tensor ([B,]H,W,C in 0..1) as JPEG (quality 95), fitted into PREVIEW_SIZE."""
    from PIL import Image

    if image is None:
        return None
    if not isinstance(image, Image.Image):
        import numpy as np

        array = image.detach().float().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
        if array.ndim == 4:
            array = array[0]
        image = Image.fromarray(np.clip(array[..., :3] * 255.0, 0, 255).astype(np.uint8))
    image = image.convert("RGB")
    image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def encode_png(image: Any) -> bytes | None:
    """A PIL image as PNG at its own size (compression level 1, as ComfyUI sends websocket images)."""
    if image is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def image_frame(data: bytes, image_format: int, metadata: dict[str, Any] | None = None) -> bytes:
    """Type 1 (`format, image`) without metadata; type 4 (`len(json), json, image`) with it."""
    if metadata is None:
        return struct.pack(">II", PREVIEW_IMAGE, image_format) + data
    blob = json.dumps(metadata).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(blob)) + blob + data


def preview_frame_from_jpeg(jpeg: bytes, metadata: dict[str, Any] | None = None) -> bytes:
    """A JPEG preview as a type 1 frame, or type 4 with its metadata."""
    return image_frame(jpeg, JPEG, metadata)


def preview_frame(image: Any, metadata: dict[str, Any] | None = None) -> bytes | None:
    """A PIL image or an IMAGE tensor as ComfyUI's binary preview frame (JPEG); see preview_frame_from_jpeg."""
    jpeg = encode_preview(image)
    return None if jpeg is None else preview_frame_from_jpeg(jpeg, metadata)
