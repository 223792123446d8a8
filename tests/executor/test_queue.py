"""PromptStore: the state machine, priority order, crash recovery (once, then failure), persistence across
reopening the file, ComfyUI's history shape and paging, the history cap, and credentials never stored.
LocalDispatcher on toy nodes: priority order with the cache shared across prompts, `executing {node: null}`
after history is written, a failing node (and an OOM) then the next prompt, validation on submit, interrupt
of only the named running prompt, a clean stop putting the running prompt back, /free when idle.
Robustness: a failed COMMIT is rolled back, a rollback never masks the error; one store per database (file
lock); the worker outlives anything (store errors, SystemExit/KeyboardInterrupt in a node); a stop that times
out still puts the running prompt back; the queue is read as one snapshot."""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from executor import dispatch
from executor.dispatch import LocalDispatcher
from executor.errors import ValidationFailed
from executor.queue import CRASHED_TWICE, DuplicatePromptId, InvalidTransition, PromptStore, State, StoreInUse
from executor.runner import Event, Executor
from executor.schema import Input, Node, Output, Registry, Result

PROMPT = {"1": {"class_type": "Show", "inputs": {"x": 1.0}}}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "user" / "sumi.db"


def add(store: PromptStore, pid: str, number: float | None = None, **extra: object) -> None:
    store.enqueue(pid, store.next_number() if number is None else number, PROMPT, dict(extra), ["1"])


def test_wal_mode_and_file_created(db: Path) -> None:
    PromptStore(db)
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_claims_lowest_number_then_insertion_order(db: Path) -> None:
    store = PromptStore(db)
    add(store, "a")  # 0
    add(store, "b")  # 1
    add(store, "c", number=1)  # ties with b: b was first
    add(store, "front", number=-store.next_number())  # ComfyUI's front: negated counter
    add(store, "late", number=0.5)
    order = []
    while (item := store.claim_next()) is not None:
        assert item.state is State.RUNNING and item.attempts == 1
        order.append(item.prompt_id)
        store.finish(item.prompt_id, State.SUCCESS)
    assert order == ["front", "a", "late", "b", "c"]


def test_state_machine_refuses_other_transitions(db: Path) -> None:
    store = PromptStore(db)
    add(store, "a")
    with pytest.raises(InvalidTransition):
        store.finish("a", State.SUCCESS)  # pending → success skips running
    with pytest.raises(InvalidTransition):
        store.release("a")  # only a running item can be released
    item = store.claim_next()
    assert item is not None and store.running()[0].prompt_id == "a"
    with pytest.raises(InvalidTransition):
        store.finish("a", State.PENDING)  # not a final state
    store.finish("a", State.INTERRUPTED)
    with pytest.raises(InvalidTransition):
        store.finish("a", State.SUCCESS)  # finished is final
    with pytest.raises(KeyError):
        store.finish("nope", State.SUCCESS)
    assert store.get("a").state is State.INTERRUPTED


def test_duplicate_prompt_id_refused(db: Path) -> None:
    store = PromptStore(db)
    add(store, "a")
    with pytest.raises(DuplicatePromptId):
        add(store, "a")


def test_non_finite_number_is_not_a_duplicate(db: Path) -> None:
    store = PromptStore(db)
    for number in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError) as caught:
            store.enqueue("x", number, PROMPT, {}, ["1"])
        assert not isinstance(caught.value, DuplicatePromptId)
    store._db.execute("CREATE TRIGGER no_b BEFORE INSERT ON items WHEN NEW.prompt_id = 'b' "
                      "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: no b'); END")
    with pytest.raises(sqlite3.IntegrityError) as other:  # another constraint: not reported as a duplicate
        add(store, "b")
    assert not isinstance(other.value, DuplicatePromptId)
    assert store.pending() == []


class _FailingCommit:
    """The store's connection, except that COMMIT fails (a full disk, an I/O error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_failed_commit_is_rolled_back(db: Path) -> None:
    store = PromptStore(db)
    real = store._db
    store._db = _FailingCommit(real)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        add(store, "lost", number=0)
    store._db = real
    assert not real.in_transaction  # not left open: every later transaction would fail to BEGIN
    add(store, "next", number=1)
    assert [i.prompt_id for i in store.pending()] == ["next"]


def test_rollback_never_masks_the_error(db: Path) -> None:
    store = PromptStore(db)
    with pytest.raises(ValueError, match="the real problem"), store._tx() as tx:
        tx.execute("ROLLBACK")  # as SQLite does by itself on some errors: nothing left to roll back
        raise ValueError("the real problem")
    add(store, "a")
    assert [i.prompt_id for i in store.pending()] == ["a"]


def test_one_store_per_database(db: Path) -> None:
    first = PromptStore(db)
    add(first, "running")
    first.claim_next()
    with pytest.raises(StoreInUse, match="in use by another Sumi server"):
        PromptStore(db)  # a second server: it must not recover() (re-queue) the first one's running prompt
    assert first.get("running").state is State.RUNNING
    first.close()
    second = PromptStore(db)  # the lock goes with the store
    assert second.recover() == (["running"], [])
    second.close()


def test_sequence_and_wall_times_never_decrease(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = PromptStore(db)
    add(store, "a")
    first = store.get("a").queued_at
    monkeypatch.setattr("executor.queue.time.time", lambda: first - 3600)  # the clock jumps back an hour
    add(store, "b")
    assert store.get("b").queued_at >= first
    changes = [row[0] for row in store._db.execute("SELECT changed FROM items ORDER BY seq")]
    assert changes == sorted(changes) and len(set(changes)) == len(changes)


def test_persists_across_reopen(db: Path) -> None:
    store = PromptStore(db)
    add(store, "done")
    add(store, "waiting")
    store.claim_next()
    store.finish("done", State.SUCCESS, {"9": {"images": [{"filename": "x.png", "subfolder": "", "type": "output"}]}},
                 [["execution_start", {"prompt_id": "done", "timestamp": 1}]], {"9": {"node_id": "9"}})
    store.close()
    again = PromptStore(db)
    assert [i.prompt_id for i in again.pending()] == ["waiting"]
    entry = again.history_item("done")["done"]
    assert entry["outputs"]["9"]["images"][0]["filename"] == "x.png"
    add(again, "new")  # the number counter survives too: new work queues after old
    assert [i.prompt_id for i in again.pending()] == ["waiting", "new"]


def test_recover_requeues_once_then_fails(db: Path) -> None:
    store = PromptStore(db)
    add(store, "a")
    add(store, "b")
    store.claim_next()  # "a" running when the server dies
    store.close()

    store = PromptStore(db)
    assert store.recover() == (["a"], [])
    assert [i.prompt_id for i in store.pending()] == ["a", "b"]  # it keeps its place
    item = store.claim_next()
    assert item.prompt_id == "a" and item.attempts == 2
    store.close()  # dies again while running "a"

    store = PromptStore(db)
    assert store.recover() == ([], ["a"])
    entry = store.history_item("a")["a"]
    assert entry["status"]["status_str"] == "error" and not entry["status"]["completed"]
    assert entry["status"]["messages"][0][1]["exception_message"] == CRASHED_TWICE
    assert [i.prompt_id for i in store.pending()] == ["b"]


def test_release_does_not_count_an_attempt(db: Path) -> None:
    store = PromptStore(db)
    add(store, "a")
    store.claim_next()
    store.release("a")  # clean shutdown
    assert store.get("a").state is State.PENDING and store.get("a").attempts == 0
    assert store.recover() == ([], [])


def test_delete_and_clear_pending_leave_running_alone(db: Path) -> None:
    store = PromptStore(db)
    for pid in "abcd":
        add(store, pid)
    store.claim_next()
    assert store.delete_pending(["a", "b", "zz"]) == 1  # "a" is running
    assert [i.prompt_id for i in store.pending()] == ["c", "d"]
    assert store.queue_remaining() == 3
    assert store.clear_pending() == 2
    assert [i.prompt_id for i in store.running()] == ["a"]


def test_history_shape_paging_and_deletion(db: Path) -> None:
    store = PromptStore(db)
    for pid in ["p0", "p1", "p2", "p3"]:
        add(store, pid)
        store.claim_next()
        store.finish(pid, State.ERROR if pid == "p1" else State.SUCCESS)
    entry = store.history_item("p0")["p0"]
    assert set(entry) == {"prompt", "outputs", "status", "meta"}
    assert entry["prompt"] == [0, "p0", PROMPT, {}, ["1"]]
    assert entry["status"] == {"status_str": "success", "completed": True, "messages": []}
    assert store.history_item("p1")["p1"]["status"]["status_str"] == "error"
    assert list(store.history()) == ["p0", "p1", "p2", "p3"]
    assert list(store.history(max_items=2)) == ["p2", "p3"]  # ComfyUI: no offset → the last N
    assert list(store.history(max_items=2, offset=1)) == ["p1", "p2"]
    assert list(store.history(offset=3)) == ["p3"]
    add(store, "queued")
    assert store.history_item("queued") == {} and "queued" not in store.history()
    assert store.delete_history(["p0", "queued"]) == 1  # a queued item is not history
    assert store.clear_history() == 3 and store.history() == {}
    assert [i.prompt_id for i in store.pending()] == ["queued"]


def test_history_cap_drops_oldest(db: Path) -> None:
    store = PromptStore(db, history_cap=3)
    for i in range(5):
        add(store, f"p{i}")
        store.claim_next()
        store.finish(f"p{i}", State.SUCCESS)
    assert list(store.history()) == ["p2", "p3", "p4"]


def test_secrets_never_stored(db: Path) -> None:
    store = PromptStore(db)
    add(store, "a", client_id="c1", auth_token_comfy_org="T1", api_key_comfy_org="K1", my_password="P",
        refresh_token="R", extra_pnginfo={"workflow": {"nodes": []}})
    item = store.pending()[0]
    assert item.extra_data == {"client_id": "c1", "extra_pnginfo": {"workflow": {"nodes": []}}}
    store.claim_next()
    store.finish("a", State.SUCCESS)
    assert store.history_item("a")["a"]["prompt"][3] == item.extra_data
    raw = db.read_bytes() + (db.with_name(db.name + "-wal").read_bytes()
                             if db.with_name(db.name + "-wal").exists() else b"")
    for secret in (b"T1", b"K1", b"\"P\"", b"\"R\""):
        assert secret not in raw


# -- LocalDispatcher on toy nodes ----------------------------------------------------------------------------

RAN: list[str] = []


class Value(Node):
    type = "Value"
    inputs = (Input("x", "INT", default=0, min=0, max=100),)
    outputs = (Output("INT"),)

    def run(self, ctx: Any, x: int) -> tuple[Any, ...]:
        RAN.append(f"Value{x}")
        return (x,)


class Slow(Node):
    type = "Slow"
    output_node = True
    inputs = (Input("x", "INT"), Input("steps", "INT", default=1, min=1, max=1000))

    def run(self, ctx: Any, x: int, steps: int) -> Result:
        for i in range(steps):
            time.sleep(0.01)
            ctx.progress(i + 1, steps)
        RAN.append(f"Slow{x}")
        return Result((), {"text": [str(x)]})


class Exit(Node):
    """A node that raises what `except Exception` does not catch."""

    type = "Exit"
    output_node = True
    inputs = (Input("x", "INT"), Input("kind", "STRING", default="exit", optional=True))

    def run(self, ctx: Any, x: int, kind: str = "exit") -> Result:
        raise SystemExit(3) if kind == "exit" else KeyboardInterrupt()


HOLD = threading.Event()


class Stubborn(Node):
    """A node that ignores interrupts until HOLD is set."""

    type = "Stubborn"
    output_node = True
    inputs = (Input("x", "INT"),)

    def run(self, ctx: Any, x: int) -> Result:
        ctx.progress(0, 1)
        HOLD.wait(10)
        return Result((), {"text": [str(x)]})


class OutOfMemoryError(RuntimeError):
    pass


class Boom(Node):
    type = "Boom"
    output_node = True
    inputs = (Input("x", "INT"), Input("oom", "BOOLEAN", default=False, optional=True))

    def run(self, ctx: Any, x: int, oom: bool = False) -> Result:
        raise OutOfMemoryError("CUDA out of memory") if oom else ValueError("boom")


def toy(x: int, steps: int = 1, sink: str = "Slow", **inputs: Any) -> dict[str, Any]:
    return {"1": {"class_type": "Value", "inputs": {"x": x}},
            "2": {"class_type": sink, "inputs": {"x": ["1", 0], **({"steps": steps} if sink == "Slow" else {}),
                                                 **inputs}}}


@pytest.fixture
def dispatcher(db: Path) -> Any:
    registry = Registry()
    registry.register(Value, Slow, Boom, Exit, Stubborn)
    d = LocalDispatcher(PromptStore(db), Executor(registry))
    events: list[tuple[Event, str | None]] = []
    d.subscribe(lambda event, client: events.append((event, client)))
    RAN.clear()
    yield d, events
    d.stop()


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def done(d: LocalDispatcher, n: int) -> Any:
    return lambda: len(d.store.history()) >= n and d.queue_remaining() == 0


def test_dispatcher_runs_in_priority_order_and_caches(dispatcher: Any) -> None:
    d, events = dispatcher
    recorded_first: list[bool] = []  # clients fetch /history on `executing {node: null}`: it must be there

    def on_end(event: Event, client: str | None) -> None:
        if event.type == "executing" and event.data["node"] is None:
            recorded_first.append(bool(d.store.history_item(event.data["prompt_id"])))

    d.subscribe(on_end)
    first = d.submit(toy(1), extra_data={"client_id": "c"})
    d.submit(toy(2), number=5)
    d.submit(toy(3), front=True)
    d.submit(toy(1))  # identical to the first: served from the cache
    d.start()
    wait_for(done(d, 4))
    assert RAN == ["Value3", "Slow3", "Value1", "Slow1", "Value2", "Slow2"]
    history = d.store.history()
    assert all(e["status"]["status_str"] == "success" for e in history.values())
    assert history[first.prompt_id]["outputs"] == {"2": {"text": ["1"]}}
    ends = [(e.data, c) for e, c in events if e.type == "executing" and e.data["node"] is None]
    assert len(ends) == 4 and (({"node": None, "prompt_id": first.prompt_id}, "c") in ends)
    assert recorded_first == [True] * 4
    assert events[-1][0].type == "status" and events[-1][0].data == {}  # a marker: the hub reads the count
    assert d.queue_remaining() == 0


def test_dispatcher_error_then_next_and_oom(dispatcher: Any) -> None:
    d, _ = dispatcher
    bad = d.submit(toy(1, sink="Boom"))
    oom = d.submit(toy(2, sink="Boom", oom=True))
    good = d.submit(toy(3))
    d.start()
    wait_for(done(d, 3))
    history = d.store.history()
    assert history[bad.prompt_id]["status"]["status_str"] == "error"
    assert history[good.prompt_id]["status"]["status_str"] == "success"
    error = history[oom.prompt_id]["status"]["messages"][-1][1]
    assert "emptied its cache" in error["exception_message"]
    assert d.executor.cache.stats()["outputs"]["entries"] <= 2  # emptied by the OOM, refilled by the last run


def test_dispatcher_validates_on_submit(dispatcher: Any) -> None:
    d, _ = dispatcher
    with pytest.raises(ValidationFailed):
        d.submit(toy(500))
    assert d.queue_remaining() == 0


def test_interrupt_only_the_named_running_prompt(dispatcher: Any) -> None:
    d, events = dispatcher
    slow = d.submit(toy(1, steps=300))
    after = d.submit(toy(2))
    d.start()
    wait_for(lambda: any(e.type == "progress" for e, _ in events))
    assert d.interrupt(after.prompt_id) is False  # queued, not running: nothing happens
    assert d.interrupt(slow.prompt_id) is True
    wait_for(done(d, 2))
    history = d.store.history()
    assert history[slow.prompt_id]["status"] == {**history[slow.prompt_id]["status"], "status_str": "error",
                                                 "completed": False}
    assert history[slow.prompt_id]["status"]["messages"][-1][0] == "execution_interrupted"
    assert history[after.prompt_id]["status"]["status_str"] == "success"


def test_stop_puts_the_running_prompt_back(dispatcher: Any, db: Path) -> None:
    d, events = dispatcher
    slow = d.submit(toy(1, steps=300))
    d.start()
    wait_for(lambda: any(e.type == "progress" for e, _ in events))
    d.stop()
    item = d.store.get(slow.prompt_id)
    assert item.state is State.PENDING and item.attempts == 0


def test_free_clears_cache_when_idle(dispatcher: Any) -> None:
    d, _ = dispatcher
    d.submit(toy(1))
    d.start()
    wait_for(done(d, 1))
    assert d.executor.cache.stats()["outputs"]["entries"] > 0
    d.free(unload_models=False, free_memory=True)
    wait_for(lambda: d.executor.cache.stats()["outputs"]["entries"] == 0)


def test_base_exceptions_in_nodes_are_execution_errors(dispatcher: Any) -> None:
    d, events = dispatcher
    exits = d.submit(toy(1, sink="Exit"))
    keyboard = d.submit(toy(2, sink="Exit", kind="keyboard"))
    good = d.submit(toy(3))
    d.start()
    wait_for(done(d, 3), timeout=5)
    history = d.store.history()
    for prompt_id, kind in ((exits.prompt_id, "SystemExit"), (keyboard.prompt_id, "KeyboardInterrupt")):
        assert history[prompt_id]["status"]["status_str"] == "error"
        assert history[prompt_id]["status"]["messages"][-1][1]["exception_type"] == f"builtins.{kind}"
    assert history[good.prompt_id]["status"]["status_str"] == "success"
    assert sum(e.type == "execution_error" for e, _ in events) == 2


def test_worker_survives_store_and_free_failures(dispatcher: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    d, _ = dispatcher
    monkeypatch.setattr(dispatch, "ERROR_PAUSE", 0.01, raising=False)
    real_claim, real_free = d.store.claim_next, d._apply_free
    failures = [sqlite3.OperationalError("database is locked"), KeyboardInterrupt(), SystemExit(1)]

    def flaky_claim() -> Any:
        if failures:
            raise failures.pop(0)
        return real_claim()

    def flaky_free() -> None:
        monkeypatch.setattr(d, "_apply_free", real_free)
        raise KeyboardInterrupt()

    monkeypatch.setattr(d.store, "claim_next", flaky_claim)
    monkeypatch.setattr(d, "_apply_free", flaky_free)
    first = d.submit(toy(1))
    d.start()
    wait_for(done(d, 1), timeout=5)
    assert not failures and d.store.history()[first.prompt_id]["status"]["status_str"] == "success"


def test_worker_failure_on_a_claimed_prompt_records_an_error(dispatcher: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    d, events = dispatcher
    monkeypatch.setattr(dispatch, "ERROR_PAUSE", 0.01, raising=False)
    real_run = d._run

    def dies_once(running: Any) -> None:
        monkeypatch.setattr(d, "_run", real_run)
        raise SystemExit(2)

    monkeypatch.setattr(d, "_run", dies_once)
    lost = d.submit(toy(1), extra_data={"client_id": "c"})
    good = d.submit(toy(2))
    d.start()
    wait_for(done(d, 2), timeout=5)
    history = d.store.history()
    assert history[lost.prompt_id]["status"]["status_str"] == "error"
    assert history[good.prompt_id]["status"]["status_str"] == "success"
    assert any(e.type == "executing" and e.data == {"node": None, "prompt_id": lost.prompt_id} and c == "c"
               for e, c in events)


def test_stop_timeout_releases_the_running_prompt(dispatcher: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    d, events = dispatcher
    crashes: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", crashes.append)
    HOLD.clear()
    stuck = d.submit(toy(1, sink="Stubborn"))
    d.start()
    worker = d._thread
    wait_for(lambda: any(e.type == "progress" for e, _ in events))
    d.stop(timeout=0.1)  # the node ignores the interrupt
    item = d.store.get(stuck.prompt_id)
    assert item.state is State.PENDING and item.attempts == 0
    d.store.close()
    HOLD.set()  # the node returns: its prompt is no longer running and the store is closed
    worker.join(5)
    assert not worker.is_alive() and crashes == []


def test_queue_status_is_one_snapshot(dispatcher: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    d, _ = dispatcher
    first = d.submit(toy(1))
    real_pending = d.store.pending

    def worker_claims_meanwhile() -> Any:  # the worker claims between a read of pending and one of running
        items = real_pending()
        d.store.claim_next()
        return items

    monkeypatch.setattr(d.store, "pending", worker_claims_meanwhile)
    status = d.status()
    assert [i.prompt_id for i in status.pending + status.running] == [first.prompt_id]


def test_database_from_before_job_lists_is_migrated(db: Path) -> None:
    """A database made before the workflow_id column opens, keeps its items, and lists them as jobs."""
    from executor import queue

    db.parent.mkdir(parents=True)
    old = sqlite3.connect(db)
    old_schema = queue.SCHEMA.replace(",\n    workflow_id TEXT                         -- the editor workflow's "
                                      "id (extra_pnginfo.workflow.id), for job lists", "")
    old.executescript(old_schema)
    assert "workflow_id" not in {row[1] for row in old.execute("PRAGMA table_info(items)")}
    old.execute("INSERT INTO items (prompt_id, number, prompt, extra_data, outputs_to_execute, state, changed, "
                "queued_at) VALUES ('old', 0, '{}', '{}', '[]', 'pending', 1, 5.0)")
    old.commit()
    old.close()
    store = PromptStore(db)
    rows, total = store.jobs()
    assert total == 1 and rows[0].prompt_id == "old" and rows[0].workflow_id is None
    store.enqueue("new", 1, PROMPT, {"extra_pnginfo": {"workflow": {"id": "w"}}}, ["1"])
    assert [(r.prompt_id, r.workflow_id) for r in store.jobs(order="created", descending=False)[0]] == \
        [("old", None), ("new", "w")]
    store.close()
