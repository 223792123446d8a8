"""The websocket side: `/ws?clientId=`, and delivering worker events to the right clients in order.

Events arrive on the worker thread; `post` hands them to the event loop with `call_soon_threadsafe`, and
one pump task sends them in arrival order. `status` goes to every client, with the queue count read when it
is sent (the dispatcher posts only a marker, so an older count can never follow a newer one).
`execution_interrupted` goes to the client that submitted the prompt, or to every client when the prompt gave
no client_id (ComfyUI's rule for its broadcast events); other execution events go only to the submitting
client (none when it gave no client_id).

`preview` events become binary frames: PREVIEW_IMAGE (type 1: format, JPEG) or, for a client whose first
message was `feature_flags` with `supports_preview_metadata`, PREVIEW_IMAGE_WITH_METADATA (type 4: length of a
JSON blob naming the node and prompt, the JSON, the JPEG).
"""
from __future__ import annotations

import asyncio
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
JPEG = 1  # ComfyUI's image format code in PREVIEW_IMAGE frames
PREVIEW_SIZE = 512


class Hub:
    def __init__(self, dispatcher: Any, server_features: dict[str, Any]) -> None:
        self.dispatcher = dispatcher
        self.features = server_features
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.client_features: dict[str, dict[str, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: asyncio.Queue[tuple[Event, str | None]] | None = None
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue()
        self._pump = asyncio.create_task(self._run_pump())

    async def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        for ws in list(self.sockets.values()):
            await ws.close()

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
                log.exception("could not deliver %s", event.type)

    def _targets(self, event: Event, client_id: str | None) -> list[tuple[str, web.WebSocketResponse]]:
        if event.type in BROADCAST or (event.type in TO_SUBMITTER_OR_ALL and not client_id):
            return list(self.sockets.items())
        ws = self.sockets.get(client_id) if client_id else None
        return [(client_id, ws)] if client_id and ws is not None else []

    async def deliver(self, event: Event, client_id: str | None) -> None:
        targets = self._targets(event, client_id)
        if not targets:
            return
        if event.type == "preview":
            jpeg = await asyncio.to_thread(encode_preview, event.data.get("image"))
            if jpeg is None:
                return
            metadata = preview_metadata(event.data)
            sends = [ws.send_bytes(preview_frame_from_jpeg(
                jpeg, metadata if self.client_features.get(sid, {}).get("supports_preview_metadata") else None))
                for sid, ws in targets]
        else:
            data = event.data
            if event.type == "status":  # a marker: the count as it is now, not as it was when posted
                data = await asyncio.to_thread(self.status_data)
            text = json.dumps({"type": event.type, "data": data}, default=str)
            sends = [ws.send_str(text) for _, ws in targets]
        for send in sends:
            try:
                await send
            except (ConnectionError, RuntimeError):
                pass  # a client that went away; its handler removes it

    def status_data(self, sid: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": self.dispatcher.queue_remaining()}}}
        if sid is not None:
            data["sid"] = sid
        return data

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        previous = self.sockets.get(sid)
        if previous is not None:
            await previous.close()  # a reconnecting tab takes its id over
        self.sockets[sid] = ws
        try:
            await ws.send_json({"type": "status", "data": self.status_data(sid)})
            running = self.dispatcher.running_node()
            if running is not None and running[1] == sid and running[2] is not None:
                await ws.send_json({"type": "executing", "data": {"node": running[2], "display_node": running[2],
                                                                  "prompt_id": running[0]}})
            first = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                if first:
                    await self._handshake(sid, ws, msg.data)
                first = False
        finally:
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
                self.client_features.pop(sid, None)
        return ws

    async def _handshake(self, sid: str, ws: web.WebSocketResponse, text: str) -> None:
        """A client's optional first message announces its features; the server answers with its own."""
        try:
            message = json.loads(text)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("type") == "feature_flags":
            data = message.get("data")
            self.client_features[sid] = data if isinstance(data, dict) else {}
            await ws.send_json({"type": "feature_flags", "data": self.features})


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


def preview_frame_from_jpeg(jpeg: bytes, metadata: dict[str, Any] | None = None) -> bytes:
    """Type 1 (`format, image`) without metadata; type 4 (`len(json), json, image`) with it."""
    if metadata is None:
        return struct.pack(">II", PREVIEW_IMAGE, JPEG) + jpeg
    blob = json.dumps(metadata).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(blob)) + blob + jpeg


def preview_frame(image: Any, metadata: dict[str, Any] | None = None) -> bytes | None:
    """A PIL image or an IMAGE tensor as ComfyUI's binary preview frame (JPEG); see preview_frame_from_jpeg."""
    jpeg = encode_preview(image)
    return None if jpeg is None else preview_frame_from_jpeg(jpeg, metadata)
