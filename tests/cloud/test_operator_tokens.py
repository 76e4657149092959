"""Operators list and revoke operator and enrollment tokens; a revoked operator's live
stream ends at once and its next request is refused. The listings are the protocol's
records (OperatorTokenPublic, EnrollmentTokenPublic), never a token or its hash."""

from __future__ import annotations

import asyncio

from cloud_harness import Cloud

from agata.cloud.credentials.tokens import OPERATOR_PREFIX, hash_token, new_token
from agata.cloud.services.views import enrollment_token_view, operator_token_view
from agata.store.store import EnrollmentToken, OperatorToken

WHEN = "2026-12-02T03:00:00.000000Z"


async def test_a_revoked_operator_loses_its_stream_and_its_access_at_once(cloud: Cloud) -> None:
    # Prepare: a second operator, signed in (its token cached) with its stream open
    second = new_token(OPERATOR_PREFIX)
    record = cloud.node.store.add_operator_token("second", hash_token(second))
    assert (await cloud.op("rpc_exec_list_tasks", {}, token=second)).status_code == 200
    listed = (await cloud.op("rpc_exec_list_operator_tokens", {})).json()
    assert {"second", "first operator"} <= {x["name"] for x in listed}
    assert all("hash" not in key for x in listed for key in x)
    headers = {"Authorization": f"Bearer {second}"}

    async with cloud.http.stream("GET", "/api/stream", headers=headers) as stream:
        lines = stream.aiter_lines()
        assert (await anext(lines)).startswith(":")

        # Execute
        revoke = {"token_id": record.token_id}
        assert (await cloud.op("rpc_exec_revoke_operator_token", revoke)).status_code == 200

        # Assert: the stream ends within a second (not at the next keepalive or click)
        async def drain() -> None:
            async for _ in lines:
                pass

        await asyncio.wait_for(drain(), 2.0)
    assert (await cloud.op("rpc_exec_list_tasks", {}, token=second)).status_code == 401
    assert (await cloud.op("rpc_exec_list_tasks", {})).status_code == 200  # the first


async def test_enrollment_tokens_are_listed_and_revocable(cloud: Cloud) -> None:
    token = (await cloud.op("rpc_exec_create_enrollment_token", {"uses": 3})).json()
    listed = (await cloud.op("rpc_exec_list_enrollment_tokens", {})).json()
    assert [x["uses_left"] for x in listed] == [3]
    assert token["enrollment_token"] not in str(listed)

    revoked = await cloud.op(
        "rpc_exec_revoke_enrollment_token", {"token_id": listed[0]["token_id"]}
    )
    unknown = await cloud.op("rpc_exec_revoke_enrollment_token", {"token_id": "nope"})
    enroll = await cloud.http.post(
        "/api/devices/enroll",
        json={"user_id": "pi-1", "enrollment_token": token["enrollment_token"]},
    )

    assert revoked.status_code == 200
    assert unknown.status_code == 404
    assert enroll.status_code == 401
    assert (await cloud.op("rpc_exec_list_enrollment_tokens", {})).json()[0]["revoked"] is True


def test_the_token_listings_are_the_protocol_records_field_for_field() -> None:
    operator = OperatorToken("o1", "alice", token_hash="secret-1", created_at=WHEN)
    enrollment = EnrollmentToken(
        "e1", "lab", token_hash="secret-2", created_at=WHEN, uses_left=3, revoked=True
    )

    listed = [operator_token_view(operator), enrollment_token_view(enrollment)]

    assert list(listed[0].items()) == [
        ("token_id", "o1"),
        ("name", "alice"),
        ("created_at", WHEN),
        ("revoked", False),
    ]
    assert list(listed[1].items()) == [
        ("token_id", "e1"),
        ("name", "lab"),
        ("created_at", WHEN),
        ("expires_at", None),
        ("uses_left", 3),
        ("revoked", True),
    ]
    assert "secret" not in str(listed)
