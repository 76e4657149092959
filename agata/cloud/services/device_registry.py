"""The device registry service (the original "user manager").

Devices and their attributes, what each device reports about its tasks, quarantine,
enrollment of devices and resolution of credentials for the gateway.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from agata.bus.bus import Bus, Consumer, Delivery
from agata.bus.service import Service
from agata.cloud.credentials.tokens import DEVICE_PREFIX, ENROLLMENT_PREFIX, hash_token, new_token
from agata.cloud.criteria.device_query import parse_device_filter
from agata.cloud.services.events import EventPublisher
from agata.cloud.services.notifier import Notifier
from agata.cloud.services.report_scope import ReportScope
from agata.cloud.services.views import device_view, enrollment_token_view, operator_token_view
from agata.errors import AgataError, ErrorCode
from agata.protocol import operations as ops
from agata.protocol.notifications import (
    DeviceChanged,
    DeviceTaskReported,
    LogAppended,
    MetricRecorded,
    OperatorTokenRevoked,
    QuarantineCleared,
    TaskChanged,
    parse_notification,
)
from agata.settings.shared_settings import DEFAULT_REQUEST_INTERVAL
from agata.store.async_store import AsyncStore, as_async
from agata.store.store import DeviceTaskStatus, NewLogLine, Store

logger = logging.getLogger(__name__)

#: Statuses a report records (``downloaded`` is accepted, as the original did, but
#: not kept).
RECORDED_STATUSES = frozenset(s.value for s in DeviceTaskStatus)
#: A device's ``last_seen`` is written at most this often by its reports (its polls
#: touch it too, through the task manager, as often).
TOUCH_SECONDS = 10.0


class DeviceRegistry(Service):
    def __init__(
        self,
        bus: Bus,
        store: Store | AsyncStore,
        *,
        hide_internal_errors: bool = False,
        register_events: bool = True,
        poll_interval: float = DEFAULT_REQUEST_INTERVAL,
    ) -> None:
        """``poll_interval``: the fleet's ``request_interval``; the report scope's records
        are reused for one of them."""
        super().__init__(bus, "device-registry", hide_internal_errors=hide_internal_errors)
        self.store = as_async(store)
        self._last_touch: dict[str, float] = {}
        self.notifier = Notifier(bus)
        self.event = EventPublisher(bus, "device-registry", enabled=register_events)
        self.scope = ReportScope(self.store, cache_seconds=poll_interval)
        self._subscription: Consumer | None = None
        for name, handler in [
            (ops.UPDATE_USER_INFO, self.update_user_info),
            (ops.GET_USER_INFO, self.get_user_info),
            (ops.LIST_DEVICES, self.list_devices),
            (ops.REPORT_DEVICE_TASK, self.report_device_task),
            (ops.CLEAR_QUARANTINE, self.clear_quarantine),
            (ops.ENROLL_DEVICE, self.enroll_device),
            (ops.CREATE_ENROLLMENT_TOKEN, self.create_enrollment),
            (ops.RESOLVE_CREDENTIAL, self.resolve_credential),
            (ops.REVOKE_DEVICE, self.revoke_device),
            (ops.QUERY_DEVICES, self.query_devices),
            (ops.DELETE_DEVICE, self.delete_device),
            (ops.LIST_OPERATOR_TOKENS, self.list_operator_tokens),
            (ops.REVOKE_OPERATOR_TOKEN, self.revoke_operator_token),
            (ops.LIST_ENROLLMENT_TOKENS, self.list_enrollment_tokens),
            (ops.REVOKE_ENROLLMENT_TOKEN, self.revoke_enrollment_token),
        ]:
            self.add_operation(name, ops.OPERATION_MODELS[name], handler)  # type: ignore[arg-type]

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(
            ops.NOTIFICATIONS_TOPIC, self._on_notification
        )
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        if self._subscription is not None:
            await self._subscription.cancel()
        await self.event.close()

    async def _on_notification(self, delivery: Delivery) -> None:
        """A task changed, or a device's record (on any replica): the reports they
        concern are checked afresh. A device's own reports (``device_task``) change neither."""
        notification = parse_notification(delivery.body)
        if isinstance(notification, TaskChanged):
            self.scope.forget_task(notification.task_id)
        elif isinstance(notification, DeviceChanged):
            self.scope.forget_device(notification.user_id)
        return None

    async def update_user_info(self, req: ops.UpdateUserInfo) -> None:
        """Insert the device if new, else update the given fields (sensors as a set)."""
        device = await self.store.upsert_device(
            req.user_id,
            data_qnt=req.data_qnt,
            avg_acc_contrib=req.avg_acc_contrib,
            avg_disconnection_per_round=req.avg_disconnection_per_round,
            sensors=req.sensors,
            extra=req.extra,
        )
        self.scope.forget_device(req.user_id)
        self.event(ops.UPDATE_USER_INFO, "Device info updated", user_id=req.user_id)
        await self.notifier.notify(DeviceChanged(user_id=device.user_id))

    async def get_user_info(self, req: ops.UserRef) -> dict[str, Any]:
        device = await self.store.get_device(req.user_id)
        return device_view(device, await self.store.list_device_tasks(req.user_id))

    async def list_devices(self, req: ops.Empty) -> list[dict[str, Any]]:
        devices = await self.store.list_devices()
        states = await self.store.device_task_states()
        return [device_view(d, states.get(d.user_id, [])) for d in devices]

    async def query_devices(self, req: ops.QueryDevices) -> dict[str, Any]:
        """One page of devices and the total matching ``q``
        (:mod:`agata.cloud.criteria.device_query`)."""
        query = parse_device_filter(
            req.q, sort=req.sort, descending=req.order == "desc", limit=req.limit, offset=req.offset
        )
        page = await self.store.query_devices(query)
        return {
            "items": [device_view(d, page.tasks.get(d.user_id, [])) for d in page.items],
            "total": page.total,
        }

    async def delete_device(self, req: ops.UserRef) -> dict[str, str]:
        """Decommission: the device, its credential and task states go; its events and
        the metrics it reported (a run's history) stay. It may enroll again as new."""
        await self.store.delete_device(req.user_id)
        self.scope.forget_device(req.user_id)
        self._last_touch.pop(req.user_id, None)
        self.event(ops.DELETE_DEVICE, "Device decommissioned", user_id=req.user_id)
        await self.notifier.notify(DeviceChanged(user_id=req.user_id, deleted=True))
        return {"user_id": req.user_id}

    async def list_operator_tokens(self, req: ops.Empty) -> list[dict[str, Any]]:
        """Every operator token (id, name, created, revoked); never a token or its hash."""
        return [operator_token_view(x) for x in await self.store.list_operator_tokens()]

    async def revoke_operator_token(self, req: ops.TokenRef) -> dict[str, str]:
        """End an operator token: the gateway refuses it from its next request on and
        ends the live streams opened with it (the "operator_token" notification)."""
        await self.store.revoke_operator_token(req.token_id)
        self.event(ops.REVOKE_OPERATOR_TOKEN, "Operator token revoked")
        await self.notifier.notify(OperatorTokenRevoked(token_id=req.token_id, revoked=True))
        return {"token_id": req.token_id}

    async def list_enrollment_tokens(self, req: ops.Empty) -> list[dict[str, Any]]:
        """Every enrollment token (id, created, expiry, uses left, revoked)."""
        return [enrollment_token_view(x) for x in await self.store.list_enrollment_tokens()]

    async def revoke_enrollment_token(self, req: ops.TokenRef) -> dict[str, str]:
        await self.store.revoke_enrollment_token(req.token_id)
        self.event(ops.REVOKE_ENROLLMENT_TOKEN, "Enrollment token revoked")
        return {"token_id": req.token_id}

    async def report_device_task(self, req: ops.ReportDeviceTask) -> None:
        """A device reports what happened to one of its tasks (and its metrics).

        Only a report in the device's scope is recorded (:mod:`agata.cloud.services.report_scope`:
        a task it is offered in the current run, or the end of its part in one); any
        other is 404 ``task '<id>' not found``, as for a task that does not exist. An
        unknown device is 404 too. Nothing is written before every check passed (the
        request model bounds the round, the output lines, and refuses non-finite
        metrics). A ``quarantined`` report's ``quarantined_until`` is kept with its
        status; a ``failed`` report's ``log_lines`` become the task's log lines with the
        device as their source (:meth:`_record_output`)."""
        await self.scope.check(req.user_id, req.task_id, req.status)
        if req.status in RECORDED_STATUSES:
            await self.store.set_device_task_status(
                req.user_id,
                req.task_id,
                req.status,
                req.reason,
                run=req.run,
                quarantined_until=req.quarantined_until,
            )
        await self._touch(req.user_id)
        if req.log_lines and req.status == DeviceTaskStatus.FAILED.value:
            await self._record_output(req.user_id, req.task_id, req.log_lines, req.run)
        if req.round is not None and req.metrics:
            await self.store.add_metric(
                req.task_id, req.round, req.user_id, req.metrics, run=req.run
            )
            await self.notifier.notify(
                MetricRecorded(
                    task_id=req.task_id, round=req.round, source=req.user_id, metrics=req.metrics
                )
            )
        self.event(
            ops.REPORT_DEVICE_TASK,
            f"device {req.user_id} {req.status} task {req.task_id}"
            + (f": {req.reason}" if req.reason else ""),
            user_id=req.user_id,
            task_id=req.task_id,
            run=req.run,  # None: the task's current run
        )
        await self.notifier.notify(
            DeviceTaskReported(
                user_id=req.user_id, task_id=req.task_id, status=req.status, reason=req.reason
            )
        )

    async def _record_output(
        self, user_id: str, task_id: str, lines: list[ops.ReportedLine], run: int | None
    ) -> None:
        """Store a failed client side's last output lines as log lines of the task's run
        ``run`` (None: the current run), with the device as their source (the one place
        a device's lines are written)."""
        now = time.time()
        await self.store.add_log_lines(
            task_id, [NewLogLine(user_id, line.stream, line.text, now) for line in lines], run=run
        )
        for line in lines:
            await self.notifier.notify(
                LogAppended(
                    task_id=task_id,
                    source=user_id,
                    stream=line.stream,
                    text=line.text,
                    time=now,
                    run=run,
                )
            )

    async def _touch(self, user_id: str) -> None:
        """Record that the device was seen, at most every ``TOUCH_SECONDS`` (a device
        reports several times a second while it plays a task); 404 when unknown."""
        now = time.monotonic()
        if now - self._last_touch.get(user_id, -TOUCH_SECONDS) >= TOUCH_SECONDS:
            await self.store.touch_device(user_id)
            self._last_touch[user_id] = now

    async def clear_quarantine(self, req: ops.ClearQuarantine) -> dict[str, int]:
        await self.store.get_device(req.user_id)
        cleared = await self.store.clear_quarantine(req.user_id, req.task_id)
        await self.notifier.notify(QuarantineCleared(user_id=req.user_id, task_id=req.task_id))
        return {"cleared": cleared}

    async def create_enrollment(self, req: ops.CreateEnrollmentToken) -> dict[str, Any]:
        token = new_token(ENROLLMENT_PREFIX)
        expires = datetime.now(UTC) + timedelta(seconds=req.ttl_seconds)
        record = await self.store.add_enrollment_token(
            "enrollment", hash_token(token), uses=req.uses, expires_at=expires
        )
        return {"enrollment_token": token, "uses": req.uses, "expires_at": record.expires_at}

    async def enroll_device(self, req: ops.EnrollDevice) -> dict[str, str]:
        """Spend an enrollment token; the device gets its own credential (shown once).

        An id that already holds a credential is refused (409): an enrollment token must
        not let its holder take over another device's identity. The operator revokes
        the old credential first (a reinstalled device). The token is checked (and
        spent) first, so a caller without one learns nothing about which ids exist.
        """
        if await self.store.consume_enrollment_token(hash_token(req.enrollment_token)) is None:
            raise AgataError(
                ErrorCode.UNAUTHENTICATED, "enrollment token unknown, expired or used up"
            )
        try:
            enrolled = (await self.store.get_device(req.user_id)).credential_hash is not None
        except AgataError as exc:
            if exc.code is not ErrorCode.NOT_FOUND:
                raise
            enrolled = False
        if enrolled:
            raise AgataError(
                ErrorCode.CONFLICT,
                f"device {req.user_id} is already enrolled; an operator must revoke its "
                "credential (rpc_exec_revoke_device) before it can enroll again",
            )
        credential = new_token(DEVICE_PREFIX)
        await self.store.upsert_device(req.user_id)
        # The check above answers most callers; this one decides between two enrollments
        # of a new id arriving at once on different replicas.
        if not await self.store.claim_device_credential(req.user_id, hash_token(credential)):
            raise AgataError(
                ErrorCode.CONFLICT,
                f"device {req.user_id} was enrolled by another request just now",
            )
        self.event(ops.ENROLL_DEVICE, "Device enrolled", user_id=req.user_id)
        return {"user_id": req.user_id, "credential": credential}

    async def revoke_device(self, req: ops.UserRef) -> dict[str, Any]:
        """End a device's credential (a lost or stolen device); its record stays, and it
        may enroll again with a new enrollment token."""
        device = await self.store.get_device(req.user_id)
        had = device.credential_hash is not None
        if had:
            await self.store.set_device_credential(req.user_id, None)
        self.event(ops.REVOKE_DEVICE, "Device credential revoked", user_id=req.user_id)
        await self.notifier.notify(DeviceChanged(user_id=req.user_id, revoked=True))
        return {"user_id": req.user_id, "revoked": had}

    async def resolve_credential(self, req: ops.ResolveCredential) -> dict[str, Any]:
        """Who holds the token with this hash: an operator, a device, or nobody (401)."""
        operator = await self.store.find_operator_token_by_hash(req.token_sha256)
        if operator is not None:
            return {"kind": "operator", "name": operator.name, "token_id": operator.token_id}
        user_id = await self.store.find_device_by_credential_hash(req.token_sha256)
        if user_id is not None:
            return {"kind": "device", "user_id": user_id}
        raise AgataError(ErrorCode.UNAUTHENTICATED, "unknown or revoked token")
