"""Every route of the OpenAPI document with no token, wrong tokens, a device credential
and the operator token; devices acting for others; secrets at rest; legacy devices.

Expected (``--legacy-devices`` off):

- anonymous or a wrong token: 401 on every route but the public ones (health, metrics,
  enrollment), which answer 200;
- a device credential: 403, except the device operations for its own ``user_id``, its own
  event stream and the bundle of a running task it matches (200);
- the operator token: never 401/403, never a 5xx.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloud_harness import CLIENT_PY, Cloud, create_bundle_task, running_cloud

from agata.cloud.credentials.tokens import OPERATOR_PREFIX, hash_token, new_token

from .harness import (
    TASK_PASSWORD,
    TASK_USERNAME,
    WHEEL,
    Seeded,
    ThreadedCloud,
    enroll,
    gateway_document,
)

DOCUMENT = gateway_document()
ROUTES = sorted(
    (method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item
)
PUBLIC = {
    (method.upper(), path)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    if operation.get("security") == []
}
DEVICE = "dev-a"  # matches the running task t-match
OTHER = "dev-b"
#: What a device may do for itself (besides the public routes).
DEVICE_ALLOWED = {
    ("POST", "/rpc_exec_update_user_info"),
    ("POST", "/rpc_exec_client_requesting_task"),
    ("POST", "/rpc_exec_report_device_task"),
    ("POST", "/rpc_exec_register_flower_node"),
    ("GET", "/api/devices/{user_id}/stream"),
    ("GET", "/download/{task_id}/{name}"),
    ("GET", "/wheelhouse/"),
    ("GET", "/wheelhouse/{name}"),
}
#: Routes a device may call that act for nobody (nothing to act for another on).
NOT_FOR_ANYONE = {
    ("GET", "/download/{task_id}/{name}"),
    ("GET", "/wheelhouse/"),
    ("GET", "/wheelhouse/{name}"),
}
#: Operation bodies that leave the seeded tasks and devices as they are ({user} = actor).
BODIES: dict[str, dict[str, Any]] = {
    "rpc_exec_create_task": {"host": "127.0.0.1", "port": 8080, "files_paths": []},
    "rpc_exec_update_task": {"task_id": "t-idle", "port": 9000},
    "rpc_exec_get_task_by_id": {"task_id": "t-match"},
    "rpc_exec_list_tasks": {},
    "rpc_exec_delete_task": {"task_id": "t-absent"},
    "rpc_exec_start_server_task": {"task_id": "t-absent"},
    "rpc_exec_stop_server_task": {"task_id": "t-idle"},
    "rpc_exec_set_task_files": {"task_id": "t-absent", "files": []},
    "rpc_exec_client_requesting_task": {"user_id": "{user}"},
    "rpc_exec_get_task_metrics": {"task_id": "t-match"},
    "rpc_exec_get_task_logs": {"task_id": "t-match"},
    "rpc_exec_get_task_events": {"task_id": "t-match"},
    "rpc_exec_get_task_devices": {"task_id": "t-match"},
    "rpc_exec_validate_criteria": {"selection_criteria": "data_qnt > 1"},
    "rpc_exec_get_overview": {},
    "rpc_exec_update_user_info": {"user_id": "{user}", "data_qnt": 100, "sensors": ["camera"]},
    "rpc_exec_get_user_info": {"user_id": "{user}"},
    "rpc_exec_list_devices": {},
    "rpc_exec_report_device_task": {"user_id": "{user}", "task_id": "t-match", "status": "running"},
    "rpc_exec_clear_quarantine": {"user_id": "{user}"},
    "rpc_exec_create_enrollment_token": {},
    "rpc_exec_revoke_device": {"user_id": "dev-absent"},  # 404 once allowed
    "rpc_exec_query_devices": {"q": "online"},
    "rpc_exec_query_tasks": {},
    "rpc_exec_delete_device": {"user_id": "dev-absent"},  # 404 once allowed
    "rpc_exec_list_operator_tokens": {},
    "rpc_exec_revoke_operator_token": {"token_id": "absent"},  # 404 once allowed
    "rpc_exec_list_enrollment_tokens": {},
    "rpc_exec_revoke_enrollment_token": {"token_id": "absent"},  # 404 once allowed
    "rpc_exec_register_flower_node": {
        "user_id": "{user}",
        "task_id": "t-match",
        "public_key": "ecdsa-sha2-nistp384 AAAA",
    },
    "rpc_exec_list_runs": {"task_id": "t-match"},
    "rpc_exec_get_run": {"task_id": "t-match", "run": 1},  # 404 once allowed (never ran)
}
#: What an allowed call answers when the seeded records make it refuse by state, not by
#: who calls (t-match is a script task, not a running flower-app).
ALLOWED_STATUS = {("POST", "/rpc_exec_register_flower_node"): 409}
WRONG_TOKENS = {
    "unknown operator-like": new_token(OPERATOR_PREFIX),
    "unknown device-like": "agata_dev_" + secrets.token_urlsafe(32),
    "garbage": "not-a-token",
    "too long": "x" * 600,
}


@pytest.fixture(scope="module")
def http(seeded: Seeded) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=seeded.url, timeout=15) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call(
    http: httpx.Client,
    seeded: Seeded,
    method: str,
    path: str,
    headers: dict[str, str],
    user: str = DEVICE,
    task_id: str = "t-match",
    params: dict[str, str] | None = None,
) -> httpx.Response:
    """Call one route with a valid request (a stream: only its status is read)."""
    url = path.replace("{task_id}", task_id).replace("{user_id}", user)
    url = url.replace("{name}", WHEEL if path.startswith("/wheelhouse/") else "client.py")
    url = url.replace("{run}", "1")
    kwargs: dict[str, Any] = {"headers": headers, "params": params}
    if path == "/api/tasks/{task_id}/files" and method == "POST":
        url = url.replace(task_id, "t-idle")
        kwargs["files"] = [("files", ("extra.txt", b"extra"))]
    elif path in ("/api/devices/enroll", "/rpc_exec_enroll_device"):
        enrollment = http.post(
            "/rpc_exec_create_enrollment_token", json={}, headers=bearer(seeded.operator)
        ).json()["enrollment_token"]
        kwargs["json"] = {"user_id": f"new-{uuid.uuid4().hex[:8]}", "enrollment_token": enrollment}
    elif method == "POST":
        body = dict(BODIES[path.lstrip("/")])
        if path == "/rpc_exec_create_task":
            body["task_id"] = f"new-{uuid.uuid4().hex[:8]}"
        kwargs["json"] = {k: (user if v == "{user}" else v) for k, v in body.items()}
    if path.endswith("/stream"):
        with http.stream(method, url, **kwargs) as response:
            return response
    return http.request(method, url, **kwargs)


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_anonymous(http: httpx.Client, seeded: Seeded, method: str, path: str) -> None:
    response = call(http, seeded, method, path, {})

    if (method, path) in PUBLIC:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "path", sorted(p for m, p in ROUTES if m == "POST" and ("POST", p) not in PUBLIC)
)
def test_who_is_checked_before_what(http: httpx.Client, seeded: Seeded, path: str) -> None:
    bogus = {"bogus": 1, "user_id": DEVICE}

    anonymous = http.post(path, json=bogus)
    device = http.post(path, json=bogus, headers=bearer(seeded.devices[DEVICE]))
    operator = http.post(path, json=bogus, headers=bearer(seeded.operator))

    assert anonymous.status_code == 401  # not 400: the schema is no business of strangers
    allowed = ("POST", path) in DEVICE_ALLOWED
    assert device.status_code == (400 if allowed else 403)
    assert operator.status_code == 400


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("wrong", sorted(WRONG_TOKENS))
def test_wrong_token(
    http: httpx.Client, seeded: Seeded, method: str, path: str, wrong: str
) -> None:
    response = call(http, seeded, method, path, bearer(WRONG_TOKENS[wrong]))

    expected = 200 if (method, path) in PUBLIC else 401
    assert response.status_code == expected, response.text


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_device(http: httpx.Client, seeded: Seeded, method: str, path: str) -> None:
    response = call(http, seeded, method, path, bearer(seeded.devices[DEVICE]))

    if (method, path) in PUBLIC | DEVICE_ALLOWED:
        assert response.status_code == ALLOWED_STATUS.get((method, path), 200), response.text
    else:
        assert response.status_code == 403, response.text


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_operator(http: httpx.Client, seeded: Seeded, method: str, path: str) -> None:
    response = call(http, seeded, method, path, bearer(seeded.operator))

    assert response.status_code not in (401, 403), response.text
    assert response.status_code < 500, response.text
    assert response.status_code in (200, 404, 409), response.text  # 404/409: absent, idle


@pytest.mark.parametrize(("method", "path"), sorted(DEVICE_ALLOWED - NOT_FOR_ANYONE))
def test_a_device_may_not_act_for_another(
    http: httpx.Client, seeded: Seeded, method: str, path: str
) -> None:
    response = call(http, seeded, method, path, bearer(seeded.devices[DEVICE]), user=OTHER)

    assert response.status_code == 403, response.text


def test_a_device_may_not_use_the_client_id_alias_for_another(
    http: httpx.Client, seeded: Seeded
) -> None:
    response = http.post(
        "/rpc_exec_client_requesting_task",
        json={"client_id": OTHER},
        headers=bearer(seeded.devices[DEVICE]),
    )

    assert response.status_code == 403


def test_a_device_may_not_read_any_device_record(http: httpx.Client, seeded: Seeded) -> None:
    other = http.post(
        "/rpc_exec_get_user_info", json={"user_id": OTHER}, headers=bearer(seeded.devices[DEVICE])
    )
    listing = http.post("/rpc_exec_list_devices", json={}, headers=bearer(seeded.devices[DEVICE]))

    assert other.status_code == 403
    assert listing.status_code == 403


@pytest.mark.parametrize(
    ("device", "task_id"),
    [
        (DEVICE, "t-other"),  # running, criteria not met
        (DEVICE, "t-idle"),  # not running
        (DEVICE, "t-absent"),  # no such task: the same answer (no oracle)
        (OTHER, "t-match"),  # running, but this device does not match it
    ],
)
def test_a_device_downloads_only_the_tasks_it_matches(
    http: httpx.Client, seeded: Seeded, device: str, task_id: str
) -> None:
    response = http.get(f"/download/{task_id}/client.py", headers=bearer(seeded.devices[device]))
    mine = http.get("/download/t-match/client.py", headers=bearer(seeded.devices[DEVICE]))

    assert response.status_code == 403, response.text
    assert mine.status_code == 200
    assert mine.content == CLIENT_PY.encode()


def test_the_operator_stream_and_its_query_token(http: httpx.Client, seeded: Seeded) -> None:
    def status(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        with http.stream("GET", url, headers=headers or {}) as response:
            first = next(response.iter_lines()) if response.status_code == 200 else ""
            return response.status_code, first

    assert status("/api/stream", bearer(seeded.operator)) == (200, ": connected")
    assert status(f"/api/stream?token={seeded.operator}") == (200, ": connected")
    assert status(f"/api/stream?token={seeded.devices[DEVICE]}")[0] == 403
    assert status("/api/stream?token=agata_op_wrong")[0] == 401
    assert status(f"/api/devices/{DEVICE}/stream", bearer(seeded.devices[DEVICE]))[0] == 200
    assert status(f"/api/devices/{OTHER}/stream", bearer(seeded.devices[DEVICE]))[0] == 403


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_token_in_the_url_works_on_streams_only(
    http: httpx.Client, seeded: Seeded, method: str, path: str
) -> None:
    response = call(http, seeded, method, path, {}, params={"token": seeded.operator})

    if path.endswith("/stream") or (method, path) in PUBLIC:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 401, response.text
        assert "?token=" in response.json()["detail"]


def test_a_mutation_with_a_token_in_the_url_changes_nothing(
    http: httpx.Client, seeded: Seeded
) -> None:
    task_id = f"new-{uuid.uuid4().hex[:8]}"
    body = {"task_id": task_id, "host": "127.0.0.1", "port": 8080}

    created = http.post("/rpc_exec_create_task", params={"token": seeded.operator}, json=body)
    found = http.post(
        "/rpc_exec_get_task_by_id", json={"task_id": task_id}, headers=bearer(seeded.operator)
    )

    assert created.status_code == 401, created.text
    assert found.status_code == 404, found.text


def test_a_device_stream_with_a_token_in_the_url(http: httpx.Client, seeded: Seeded) -> None:
    def status(url: str) -> int:
        with http.stream("GET", url) as response:
            return response.status_code

    mine = seeded.devices[DEVICE]

    assert status(f"/api/devices/{DEVICE}/stream?token={mine}") == 200
    assert status(f"/api/devices/{OTHER}/stream?token={mine}") == 403
    assert status(f"/api/devices/{DEVICE}/stream?token=agata_dev_wrong") == 401


def test_revoked_and_look_alike_tokens_are_refused(
    http: httpx.Client, seeded: Seeded, threaded_cloud: ThreadedCloud
) -> None:
    assert threaded_cloud.cloud is not None
    store = threaded_cloud.cloud.node.store
    revoked = new_token(OPERATOR_PREFIX)
    record = store.add_operator_token("to revoke", hash_token(revoked))
    store.revoke_operator_token(record.token_id)
    enrollment = http.post(
        "/rpc_exec_create_enrollment_token", json={}, headers=bearer(seeded.operator)
    ).json()["enrollment_token"]
    tries = {
        "revoked": bearer(revoked),
        "the hash of a token": bearer(hash_token(seeded.operator)),
        "an enrollment token": bearer(enrollment),
        "the operator token with a suffix": bearer(seeded.operator + "x"),
        "the operator token in Basic": {"Authorization": "Basic " + "b3A6" + "eA=="},
        "another scheme": {"Authorization": f"Token {seeded.operator}"},
    }

    answers = {
        name: http.post("/rpc_exec_list_tasks", json={}, headers=headers).status_code
        for name, headers in tries.items()
    }

    assert answers == dict.fromkeys(tries, 401)


def test_the_task_password_never_reaches_a_device(http: httpx.Client, seeded: Seeded) -> None:
    device = bearer(seeded.devices[DEVICE])
    answers = [
        http.post("/rpc_exec_client_requesting_task", json={"user_id": DEVICE}, headers=device),
        http.post(
            "/rpc_exec_client_requesting_task",
            json={"user_id": DEVICE},
            headers=bearer(seeded.operator),
        ),
        http.post("/rpc_exec_get_task_by_id", json={"task_id": "t-match"}, headers=device),
        http.post(
            "/rpc_exec_get_task_by_id",
            json={"task_id": "t-match"},
            headers=bearer(seeded.operator),
        ),
        http.post("/rpc_exec_list_tasks", json={}, headers=bearer(seeded.operator)),
    ]
    offers = answers[0].json()

    assert [offer["ID"] for offer in offers] == ["t-match"]
    assert not {"username", "password"} & set(offers[0])
    for answer in answers:
        assert TASK_PASSWORD not in answer.text


def test_tokens_are_stored_hashed(http: httpx.Client, seeded: Seeded) -> None:
    assert seeded.db_path is not None
    enrollment = http.post(
        "/rpc_exec_create_enrollment_token", json={}, headers=bearer(seeded.operator)
    ).json()["enrollment_token"]
    with sqlite3.connect(seeded.db_path) as db:
        dump = "\n".join(db.iterdump())

    for secret in [*seeded.secrets, enrollment]:
        assert secret not in dump
        assert secret.split("_", 2)[-1] not in dump  # not even without the prefix
        assert hashlib.sha256(secret.encode()).hexdigest() in dump  # its hash is there
    token_file = seeded.db_path.parent / "operator-token"
    assert token_file.stat().st_mode & 0o077 == 0  # the first token's file: owner only


# -- legacy devices (--legacy-devices), each with a cloud of its own -----------------


async def legacy_setup(cloud: Cloud) -> None:
    await create_bundle_task(
        cloud,
        "t1",
        username=TASK_USERNAME,
        password=TASK_PASSWORD,
        server_arguments=["1", "--hold"],
    )
    assert (await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})).status_code == 200


async def test_legacy_off_refuses_task_passwords_and_anonymous_devices(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        await legacy_setup(cloud)

        basic = await cloud.http.get("/download/t1/client.py", auth=(TASK_USERNAME, TASK_PASSWORD))
        report = await cloud.op("rpc_exec_update_user_info", {"user_id": "old-1"}, token=None)
        ask = await cloud.op("rpc_exec_client_requesting_task", {"user_id": "old-1"}, token=None)
        offers = await cloud.op("rpc_exec_client_requesting_task", {"user_id": "old-1"})
        stream = await cloud.http.get("/api/devices/old-1/stream")

    assert basic.status_code == 401
    assert "legacy" in basic.json()["detail"]
    assert report.status_code == 401
    assert ask.status_code == 401
    assert stream.status_code == 401
    assert TASK_PASSWORD not in offers.text


async def test_legacy_on_lets_old_devices_in_and_only_them(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, legacy_devices=True) as cloud:
        await legacy_setup(cloud)
        credential = await enroll(cloud, "new-1")

        basic = await cloud.http.get("/download/t1/client.py", auth=(TASK_USERNAME, TASK_PASSWORD))
        wrong = await cloud.http.get("/download/t1/client.py", auth=(TASK_USERNAME, "nope"))
        wrong_user = await cloud.http.get("/download/t1/client.py", auth=("nope", TASK_PASSWORD))
        anonymous_file = await cloud.http.get("/download/t1/client.py")
        report = await cloud.op("rpc_exec_update_user_info", {"user_id": "old-1"}, token=None)
        offers = await cloud.op("rpc_exec_client_requesting_task", {"user_id": "old-1"}, token=None)
        operator_only = await cloud.op("rpc_exec_list_tasks", {}, token=None)
        create = await cloud.op(
            "rpc_exec_create_task", {"task_id": "x", "host": "h", "port": 1}, token=None
        )
        device_for_other = await cloud.op(
            "rpc_exec_update_user_info", {"user_id": "old-1"}, token=credential
        )

    assert basic.status_code == 200
    assert basic.content == CLIENT_PY.encode()
    assert wrong.status_code == 401
    assert wrong_user.status_code == 401
    assert anonymous_file.status_code == 401
    assert report.status_code == 200
    assert offers.status_code == 200
    assert offers.json()[0]["username"] == TASK_USERNAME
    # legacy devices need one: made for that device, never the task's own
    assert offers.json()[0]["password"].startswith("agata-dl:old-1:")
    assert operator_only.status_code == 401
    assert create.status_code == 401
    assert device_for_other.status_code == 403


async def test_task_passwords_are_compared_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    async with running_cloud(tmp_path, legacy_devices=True) as cloud:
        await create_bundle_task(cloud, "t1", username=TASK_USERNAME, password=TASK_PASSWORD)

        wrong_user = await cloud.http.get("/download/t1/client.py", auth=("nope", TASK_PASSWORD))
        after_wrong_user = list(compared)
        right = await cloud.http.get("/download/t1/client.py", auth=(TASK_USERNAME, TASK_PASSWORD))

    assert wrong_user.status_code == 401
    assert right.status_code == 200
    # Both the username and the password are compared, even when the username is wrong
    # (no early exit), and with hmac.compare_digest: the password as its scrypt digest
    # (the store has no clear password to compare with).
    assert (b"nope", TASK_USERNAME.encode()) in after_wrong_user
    digests = [(a, b) for a, b in after_wrong_user if len(a) == len(b) == 32]
    assert any(a == b for a, b in digests), after_wrong_user
    assert not any(TASK_PASSWORD.encode() in (a, b) for a, b in compared)
