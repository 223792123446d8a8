"""Dispatchers take validated prompts, run them in priority order and publish their events.

`Dispatcher` is the interface the HTTP server talks to; `LocalDispatcher` runs everything in one worker
thread of this process, from a durable `PromptStore`, with one long-lived `Executor` so the signature cache
lives across prompts. Listeners get `(event, client_id)`: `client_id` is the submitting client for
execution events and None for `status`, which is only a marker ("the queue changed"): whoever delivers it
reads `queue_remaining()` at that moment, so a count computed earlier can never arrive after a newer one.
"""
from __future__ import annotations

import gc
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import hostmem

from .errors import ValidationFailed
from .queue import InvalidTransition, PromptStore, QueueItem, State, split_secrets
from .runner import Event, Executor, RunResult
from .workflow import parent_id

log = logging.getLogger("sumi.dispatch")

Listener = Callable[[Event, "str | None"], None]
# What history keeps of a run, as ComfyUI does: the start, what was cached, and how it ended.
RECORDED = ("execution_start", "execution_cached", "execution_success", "execution_error", "execution_interrupted")
ERROR_PAUSE = 1.0  # seconds the worker waits after an unexpected failure, so a persistent one cannot spin
# What the worker may meet once stop() gave up waiting: its prompt released, the store closed.
AFTER_STOP = (InvalidTransition, KeyError, sqlite3.ProgrammingError)


@dataclass
class Submitted:
    prompt_id: str
    number: float
    outputs: list[str]


@dataclass
class QueueStatus:
    pending: list[QueueItem]
    running: list[QueueItem]

    @property
    def remaining(self) -> int:
        return len(self.pending) + len(self.running)


@dataclass
class FreeRequest:
    unload_models: bool = False
    free_memory: bool = False


class Dispatcher(Protocol):
    """What a server needs from whatever runs prompts (in this process, or elsewhere later)."""

    store: PromptStore  # queue and history, read directly by the server

    def start(self) -> None: ...

    def stop(self, timeout: float = 30.0) -> None: ...

    def submit(self, prompt: dict[str, Any], *, prompt_id: str | None = None, number: float | None = None,
               front: bool = False, extra_data: dict[str, Any] | None = None,
               targets: list[str] | None = None) -> Submitted: ...

    def cancel(self, prompt_ids: list[str] | None = None) -> int: ...

    def interrupt(self, prompt_id: str | None = None) -> bool: ...

    def free(self, unload_models: bool, free_memory: bool) -> None: ...

    def status(self) -> QueueStatus: ...

    def queue_remaining(self) -> int: ...

    def running_node(self) -> tuple[str, str | None, str | None] | None: ...

    def subscribe(self, listener: Listener) -> Callable[[], None]: ...


@dataclass
class _Running:
    item: QueueItem
    client_id: str | None
    node: str | None = None
    interrupted: bool = False  # asked before the executor cleared its flag at start: set it again then
    stopping: bool = False


@dataclass
class LocalDispatcher:
    """One worker thread over a PromptStore and one Executor."""

    store: PromptStore
    executor: Executor
    # Whether a prompt's run computes previews (the host decides who asked for them); None: the executor's setting.
    preview_policy: Callable[[QueueItem], bool | str] | None = None
    _listeners: list[Listener] = field(default_factory=list)
    _secrets: dict[str, dict[str, Any]] = field(default_factory=dict)  # in memory only, never on disk
    _wake: threading.Condition = field(default_factory=threading.Condition)
    _free: FreeRequest | None = None
    _running: _Running | None = None
    _stop: bool = False
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if self.executor.on_oom is None:
            self.executor.on_oom = empty_accelerator_cache

    # -- control (any thread) ----------------------------------------------------------------------------

    def start(self) -> None:
        requeued, failed = self.store.recover()
        if requeued or failed:
            log.warning("recovered after a crash: %d prompt(s) re-queued, %d failed", len(requeued), len(failed))
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="sumi-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupt the running prompt and put it back in the queue, so a restart resumes it."""
        with self._wake:
            self._stop = True
            if self._running is not None:
                self._running.stopping = self._running.interrupted = True
                self.executor.interrupt_flag.set()
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            running = self._running
            if self._thread.is_alive() and running is not None:
                # A node ignores the interrupt: put its prompt back now, before the caller closes the store.
                # The worker, if it ever returns, finds the prompt released or the store closed, and ends.
                try:
                    self.store.release(running.item.prompt_id)
                    log.warning("worker still busy after %.0fs; prompt %s put back in the queue",
                                timeout, running.item.prompt_id)
                except Exception:
                    log.exception("could not put prompt %s back in the queue", running.item.prompt_id)
            self._thread = None

    def submit(self, prompt: dict[str, Any], *, prompt_id: str | None = None, number: float | None = None,
               front: bool = False, extra_data: dict[str, Any] | None = None,
               targets: list[str] | None = None) -> Submitted:
        """Validate (raises ValidationFailed with every error), then queue durably and wake the worker."""
        valid = self.executor.prepare(prompt, targets)
        prompt_id = prompt_id or str(uuid.uuid4())
        if number is None:
            number = self.store.next_number()
            if front:
                number = -number
        public, secrets = split_secrets(dict(extra_data or {}))
        if secrets:
            self._secrets[prompt_id] = secrets
        self.store.enqueue(prompt_id, number, prompt, public, valid.outputs)
        self._queue_changed()
        with self._wake:
            self._wake.notify_all()
        return Submitted(prompt_id, number, valid.outputs)

    def cancel(self, prompt_ids: list[str] | None = None) -> int:
        """Remove pending prompts (all when None); the running one is left to `interrupt`."""
        gone = self.store.clear_pending() if prompt_ids is None else self.store.delete_pending(prompt_ids)
        if gone:
            self._queue_changed()
        return gone

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt; with an id, only if that prompt is the one running."""
        running = self._running
        if prompt_id is not None and (running is None or running.item.prompt_id != prompt_id):
            return False
        if running is not None:
            running.interrupted = True
        self.executor.interrupt_flag.set()
        return True

    def free(self, unload_models: bool, free_memory: bool) -> None:
        """Free caches once the current prompt is done (or right away when idle)."""
        with self._wake:
            previous = self._free or FreeRequest()
            self._free = FreeRequest(previous.unload_models or unload_models, previous.free_memory or free_memory)
            self._wake.notify_all()

    def status(self) -> QueueStatus:
        return QueueStatus(*self.store.snapshot())

    def queue_remaining(self) -> int:
        return self.store.queue_remaining()

    def running_node(self) -> tuple[str, str | None, str | None] | None:
        """(prompt_id, client_id, node executing now) of the running prompt, if any."""
        running = self._running
        return (running.item.prompt_id, running.client_id, running.node) if running else None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _publish(self, event: Event, client_id: str | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, client_id)
            except Exception:
                log.exception("event listener failed")

    def _queue_changed(self) -> None:
        """Publish the marker only: a count computed here could reach clients after a newer one."""
        self._publish(Event("status", {}), None)

    # -- worker thread -----------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            running: _Running | None = None
            try:
                with self._wake:
                    if self._stop:
                        return
                    self._apply_free()
                    item = self.store.claim_next()
                    if item is None:
                        self._wake.wait(timeout=5.0)
                        continue
                    running = self._running = _Running(item, item.extra_data.get("client_id"))
                self._queue_changed()
                self._run(running)
            except BaseException as exc:  # the worker must outlive anything, SystemExit included
                if self._stop and isinstance(exc, AFTER_STOP):
                    log.info("worker stopped: %s", exc)
                    return
                log.exception("worker failed%s", f" on prompt {running.item.prompt_id}" if running else "")
                if running is not None:
                    self._finish_safely(running)
                with self._wake:
                    if not self._stop:
                        self._wake.wait(timeout=ERROR_PAUSE)
            finally:
                self._running = None
            if running is not None:
                self._queue_changed()

    def _run(self, running: _Running) -> None:
        item = running.item
        messages: list[list[Any]] = []

        def on_event(event: Event) -> None:
            if event.type == "execution_start" and running.interrupted:
                self.executor.interrupt_flag.set()
            if event.type == "executing":
                if event.data.get("node") is None:
                    return  # sent below, once history has the result: clients fetch it on this signal
                running.node = event.data["node"]
            if event.type in RECORDED:
                messages.append([event.type, event.data])
            self._publish(event, running.client_id)

        extra = {**item.extra_data, **self._secrets.pop(item.prompt_id, {})}
        started = time.perf_counter()
        try:
            valid = self.executor.prepare(item.prompt, item.outputs_to_execute or None)
            previews = self.preview_policy(item) if self.preview_policy is not None else None
            result = self.executor.execute(valid, item.prompt, prompt_id=item.prompt_id, extra_data=extra,
                                           on_event=on_event, previews=previews)
        except ValidationFailed as failed:  # files changed between queueing and running (or after a restart)
            result = _invalid_at_run_time(item.prompt_id, failed, on_event)
        if running.stopping and result.status == "interrupted":
            self.store.release(item.prompt_id)
            log.info("prompt %s put back in the queue for the next start", item.prompt_id)
            return
        meta = {nid: {"node_id": nid, "display_node": nid, "parent_node": parent_id(nid), "real_node_id": nid}
                for nid in result.outputs}
        self.store.finish(item.prompt_id, result.status, result.outputs, messages, meta)
        log.info("prompt %s %s in %.2fs", item.prompt_id, result.status, time.perf_counter() - started)
        self._publish(Event("executing", {"node": None, "prompt_id": item.prompt_id}), running.client_id)

    def _finish_safely(self, running: _Running) -> None:
        prompt_id = running.item.prompt_id
        try:
            self.store.finish(prompt_id, State.ERROR)
        except Exception:
            log.exception("could not record the failure of prompt %s", prompt_id)
        self._publish(Event("executing", {"node": None, "prompt_id": prompt_id}), running.client_id)

    def _apply_free(self) -> None:
        request, self._free = self._free, None
        if request is None:
            return
        if request.free_memory:
            self.executor.cache.clear()
        elif request.unload_models:
            self.executor.cache.clear("models")
        gc.collect()
        empty_accelerator_cache()
        hostmem.trim()


def empty_accelerator_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _invalid_at_run_time(prompt_id: str, failed: ValidationFailed, emit: Callable[[Event], None]) -> RunResult:
    now = int(time.time() * 1000)
    first = failed.errors[0]
    error = {"prompt_id": prompt_id, "node_id": first.node_id, "node_type": first.class_type, "executed": [],
             "exception_message": "; ".join(e.render() for e in failed.errors),
             "exception_type": "ValidationFailed", "traceback": [], "current_inputs": {}, "current_outputs": [],
             "timestamp": now}
    emit(Event("execution_start", {"prompt_id": prompt_id, "timestamp": now}))
    emit(Event("execution_error", error))
    return RunResult(prompt_id, "error", error=error)
