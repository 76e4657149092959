"""A task's bundle and its recorded listing: ``start`` refuses a bundle that does not
match, and the undo journal of an upload (crash tests: tests/faults/test_bundle_crash.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cloud_harness import SERVER_PY, Cloud, create_bundle_task

from agata.cloud.bundles.bundle_journal import UndoJournal
from agata.cloud.bundles.bundle_store import BundleStore
from agata.errors import AgataError, ErrorCode
from agata.store.store import BundleFile


async def start(cloud: Cloud, task_id: str = "t1") -> tuple[int, str]:
    response = await cloud.op("rpc_exec_start_server_task", {"task_id": task_id})
    return response.status_code, response.text


async def test_start_refuses_a_file_changed_behind_its_listing(cloud: Cloud) -> None:
    # Prepare: server.py rewritten in place with other bytes of the same size, and its
    # modification time put back (what a size+mtime check alone would miss)
    await create_bundle_task(cloud)
    path = cloud.node.bundles.task_dir("t1") / "server.py"
    info = path.stat()
    path.write_bytes(SERVER_PY.encode().replace(b"0.5", b"0.6"))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert path.stat().st_size == info.st_size

    # Execute
    refused = await start(cloud)
    reupload = await cloud.http.post(
        "/api/tasks/t1/files",
        files=[("files", ("server.py", SERVER_PY.encode()))],
        headers=cloud.auth,
    )
    started = await start(cloud)
    await cloud.op("rpc_exec_stop_server_task", {"task_id": "t1"})
    task = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "t1"})).json()

    # Assert: 409 with the reason, nothing started; after a new upload it starts
    assert refused[0] == 409, refused
    assert "does not match its listing" in refused[1] and "'server.py'" in refused[1]
    assert "upload the bundle files again" in refused[1]
    assert reupload.status_code == 200, reupload.text
    assert started[0] == 200, started
    assert task["running"] is False


async def test_start_refuses_a_missing_file_but_not_an_unlisted_one(cloud: Cloud) -> None:
    # Prepare: a listed file gone; a file the listing does not name (devices never get
    # it: a server side may write into its folder, its working directory)
    await create_bundle_task(cloud, "gone")
    await create_bundle_task(cloud, "extra")
    (cloud.node.bundles.task_dir("gone") / "client.py").unlink()
    (cloud.node.bundles.task_dir("extra") / "output.json").write_bytes(b"{}\n")

    gone = await start(cloud, "gone")
    extra = await start(cloud, "extra")
    await cloud.op("rpc_exec_stop_server_task", {"task_id": "extra"})

    assert gone[0] == 409 and "'client.py' is missing" in gone[1], gone
    assert extra[0] == 200, extra


def listing(store: BundleStore, task_id: str) -> list[BundleFile]:
    return [BundleFile(f.name, f.size, f.sha256) for f in store.list_files(task_id)]


def test_a_failed_recording_puts_the_previous_files_back(tmp_path: Path) -> None:
    store = BundleStore(tmp_path)
    store.write_files("t1", [("server.py", b"v1"), ("client.py", b"c")])
    before = listing(store, "t1")

    with pytest.raises(AgataError), store.undo_on_error("t1"):
        store.write_files("t1", [("server.py", b"v2"), ("new.py", b"n")])
        raise AgataError(ErrorCode.UNAVAILABLE, "the store is full")

    assert listing(store, "t1") == before
    assert not list((tmp_path / ".staging").iterdir())


def test_recover_leaves_a_live_writers_journal_alone(tmp_path: Path) -> None:
    # Prepare: an upload in progress (its journal locked) whose listing is not recorded
    store = BundleStore(tmp_path)
    store.write_files("t1", [("server.py", b"v1")])
    recorded = listing(store, "t1")
    asked: list[str] = []

    def recorded_listing(task_id: str) -> list[BundleFile]:
        asked.append(task_id)
        return recorded

    with store.undo_on_error("t1"):
        store.write_files("t1", [("server.py", b"v2")])

        # Execute: another recovery (another process starting) runs meanwhile
        outcome = store.recover(recorded_listing)
        during = (store.task_dir("t1") / "server.py").read_bytes()
        recorded = listing(store, "t1")  # the writer records its listing

    # Assert: untouched while the writer ran; its journal gone once it finished
    assert outcome == {} and asked == []
    assert during == b"v2"
    assert store.recover(recorded_listing) == {}
    assert not list((tmp_path / ".staging").glob("undo-*"))


def test_a_journal_survives_the_stale_staging_cleanup(tmp_path: Path) -> None:
    # Prepare: the journal of a writer that died after writing v2 (its lock released,
    # its journal kept), older than the staging cleanup's age limit
    store = BundleStore(tmp_path)
    store.write_files("t1", [("server.py", b"v1")])
    old = listing(store, "t1")
    bundle_fd = os.open(store.task_dir("t1"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        journal = UndoJournal.create(tmp_path / ".staging", "t1", bundle_fd)
    finally:
        os.close(bundle_fd)
    store.write_files("t1", [("server.py", b"v2"), ("new.py", b"n")])
    journal.release()
    os.utime(journal.folder, (1, 1))

    # Execute: a new store starts (its stale cleanup runs) and recovers
    restarted = BundleStore(tmp_path)
    outcome = restarted.recover(lambda _task_id: old)

    # Assert: the journal was not removed as stale; recovery put v1 back, new.py went
    assert outcome == {"t1": "put back"}
    assert listing(restarted, "t1") == old
    assert not list((tmp_path / ".staging").glob("undo-*"))


def test_the_loop_check_answers_from_cached_digests_only(tmp_path: Path) -> None:
    # Prepare: a bundle whose digests the store knows (it wrote the files)
    store = BundleStore(tmp_path)
    store.write_files("t1", [("server.py", b"v1"), ("client.py", b"c")])
    files = store.list_files("t1")

    # Execute / Assert: checked without reading a file; a wrong listing is refused there
    assert store.check_listing("t1", files, cached_only=True) is True
    wrong = [BundleFile(f.name, f.size, "0" * 64) if f.name == "server.py" else f for f in files]
    with pytest.raises(AgataError) as refused:
        store.check_listing("t1", wrong, cached_only=True)
    assert refused.value.code is ErrorCode.CONFLICT

    # A file rewritten behind the store: no cached digest for it as it is, so the loop
    # check leaves it to the hashing check, which refuses it
    (store.task_dir("t1") / "server.py").write_bytes(b"v2")
    assert store.check_listing("t1", files, cached_only=True) is False
    with pytest.raises(AgataError):
        store.check_listing("t1", files)
