"""A PostgreSQL server restarted under a running store: no call fails afterwards.

The store's pool used to send a ``SELECT 1`` before every transaction (``pool_pre_ping``)
to find connections the server had closed: a round trip per transaction. It now looks at
the pooled connection's socket when taking it (a closed connection is readable) and opens
a new one if the server is gone (issue 15). This test restarts a PostgreSQL server of its
own (the suite's shared one must stay up for the other tests) while the pool holds
several idle connections, then calls the store from one thread and from several.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import services_required
from helpers import free_port

from agata.store import create_store

pytestmark = pytest.mark.postgres


@dataclass
class PrivatePostgres:
    bindir: Path
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://agata@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.folder / "data")]
        command += ["-l", str(self.folder / "server.log"), "-w", "-t", "60", "-o", options]
        _as_postgres([*command, *args])

    def restart(self) -> None:
        """Stop (``-m fast``: every backend sends its FATAL and closes) and start again."""
        self.ctl("-m", "fast", "restart")


def _as_postgres(command: list[str]) -> None:
    if os.geteuid() == 0:  # initdb and the server refuse to run as root
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found or (os.geteuid() == 0 and not _user_exists("postgres")):
        reason = "no PostgreSQL server binaries (scripts/services.sh install)"
        if services_required():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="agata-pg-restart-"))
    os.chmod(folder, 0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    server = PrivatePostgres(Path(found[-1]).parent, folder, free_port())
    try:
        initdb = [str(server.bindir / "initdb"), "-D", str(folder / "data"), "-A", "trust"]
        _as_postgres([*initdb, "-U", "agata", "-E", "UTF8", "--locale=C", "--no-sync"])
        server.ctl("start")
        yield server
    finally:
        if (folder / "data" / "postmaster.pid").exists():
            server.ctl("-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_a_restarted_server_costs_the_store_no_failed_call(
    private_postgres: PrivatePostgres,
) -> None:
    store = create_store(private_postgres.url)
    try:
        store.upsert_device("d0")
        # Six connections in the pool, idle, each opened before the restart.
        held = [store.engine.connect() for _ in range(6)]
        for conn in held:
            conn.close()
        assert store.engine.pool.checkedin() >= 6

        private_postgres.restart()

        for i in range(1, 13):  # more calls than connections: each stale one is taken
            store.upsert_device(f"d{i}")
            assert store.get_device(f"d{i}").user_id == f"d{i}"
        private_postgres.restart()
        with ThreadPoolExecutor(6) as pool:
            found = list(pool.map(lambda i: store.get_device(f"d{i % 13}").user_id, range(60)))
        assert found == [f"d{i % 13}" for i in range(60)]
    finally:
        store.close()
