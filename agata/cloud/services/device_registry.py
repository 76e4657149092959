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
from agata.cloud.services.views import device_view
from agata.errors import AgataError, ErrorCode
from agata.protocol import operations as ops
from agata.protocol.notifications import (
    DeviceChanged,
    DeviceTaskReported,
    MetricRecorded,
    OperatorTokenRevoked,
    QuarantineCleared,
    TaskChanged,
    parse_notification,
)
from agata.store.store import DeviceTaskStatus, Store

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
        store: Store,
        *,
        hide_internal_errors: bool = False,
        register_events: bool = True,
    ) -> None:
        super().__init__(bus, "device-registry", hide_internal_errors=hide_internal_errors)
        self.store = store
        self._last_touch: dict[str, float] = {}
        self.notifier = Notifier(bus)
        self.event = EventPublisher(bus, "device-registry", enabled=register_events)
        self.scope = ReportScope(store)
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
        device = self.store.upsert_device(
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
        device = self.store.get_device(req.user_id)
        return device_view(device, self.store.list_device_tasks(req.user_id))

    async def list_devices(self, req: ops.Empty) -> list[dict[str, Any]]:
        return [
            device_view(d, self.store.list_device_tasks(d.user_id))
            for d in self.store.list_devices()
        ]

    async def query_devices(self, req: ops.QueryDevices) -> dict[str, Any]:
        """One page of devices and the total matching ``q``
        (:mod:`agata.cloud.criteria.device_query`)."""
        query = parse_device_filter(
            req.q, sort=req.sort, descending=req.order == "desc", limit=req.limit, offset=req.offset
        )
        page = self.store.query_devices(query)
        return {
            "items": [device_view(d, page.tasks.get(d.user_id, [])) for d in page.items],
            "total": page.total,
        }

    async def delete_device(self, req: ops.UserRef) -> dict[str, str]:
        """Decommission: the device, its credential and task states go; its events and
        the metrics it reported (a run's history) stay. It may enroll again as new."""
        self.store.delete_device(req.user_id)
        self.scope.forget_device(req.user_id)
        self._last_touch.pop(req.user_id, None)
        self.event(ops.DELETE_DEVICE, "Device decommissioned", user_id=req.user_id)
        await self.notifier.notify(DeviceChanged(user_id=req.user_id, deleted=True))
        return {"user_id": req.user_id}

    async def list_operator_tokens(self, req: ops.Empty) -> list[dict[str, Any]]:
        """Every operator token (id, name, created, revoked); never a token or its hash."""
        return [
            {
                "token_id": x.token_id,
                "name": x.name,
                "created_at": x.created_at,
                "revoked": x.revoked,
            }
            for x in self.store.list_operator_tokens()
        ]

    async def revoke_operator_token(self, req: ops.TokenRef) -> dict[str, str]:
        """End an operator token: the gateway refuses it from its next request on and
        ends the live streams opened with it (the "operator_token" notification)."""
        self.store.revoke_operator_token(req.token_id)
        self.event(ops.REVOKE_OPERATOR_TOKEN, "Operator token revoked")
        await self.notifier.notify(OperatorTokenRevoked(token_id=req.token_id, revoked=True))
        return {"token_id": req.token_id}

    async def list_enrollment_tokens(self, req: ops.Empty) -> list[dict[str, Any]]:
        """Every enrollment token (id, created, expiry, uses left, revoked)."""
        return [
            {
                "token_id": x.token_id,
                "name": x.name,
                "created_at": x.created_at,
                "expires_at": x.expires_at,
                "uses_left": x.uses_left,
                "revoked": x.revoked,
            }
            for x in self.store.list_enrollment_tokens()
        ]

    async def revoke_enrollment_token(self, req: ops.TokenRef) -> dict[str, str]:
        self.store.revoke_enrollment_token(req.token_id)
        self.event(ops.REVOKE_ENROLLMENT_TOKEN, "Enrollment token revoked")
        return {"token_id": req.token_id}

    async def report_device_task(self, req: ops.ReportDeviceTask) -> None:
        """A device reports what happened to one of its tasks (and its metrics).

        Only a report in the device's scope is recorded (:mod:`agata.cloud.services.report_scope`:
        a task it is offered in the current run, or the end of its part in one); any
        other is 404 ``task '<id>' not found``, as for a task that does not exist. An
        unknown device is 404 too. Nothing is written before every check passed (the
        request model bounds the round and refuses non-finite metrics)."""
        self.scope.check(req.user_id, req.task_id, req.status)
        if req.status in RECORDED_STATUSES:
            self.store.set_device_task_status(
                req.user_id, req.task_id, req.status, req.reason, run=req.run
            )
        self._touch(req.user_id)
        if req.round is not None and req.metrics:
            self.store.add_metric(req.task_id, req.round, req.user_id, req.metrics, run=req.run)
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
        )
        await self.notifier.notify(
            DeviceTaskReported(
                user_id=req.user_id, task_id=req.task_id, status=req.status, reason=req.reason
            )
        )

    def _touch(self, user_id: str) -> None:
        """Record that the device was seen, at most every ``TOUCH_SECONDS`` (a device
        reports several times a second while it plays a task); 404 when unknown."""
        now = time.monotonic()
        if now - self._last_touch.get(user_id, -TOUCH_SECONDS) >= TOUCH_SECONDS:
            self.store.touch_device(user_id)
            self._last_touch[user_id] = now

    async def clear_quarantine(self, req: ops.ClearQuarantine) -> dict[str, int]:
        self.store.get_device(req.user_id)
        cleared = self.store.clear_quarantine(req.user_id, req.task_id)
        await self.notifier.notify(QuarantineCleared(user_id=req.user_id, task_id=req.task_id))
        return {"cleared": cleared}

    async def create_enrollment(self, req: ops.CreateEnrollmentToken) -> dict[str, Any]:
        token = new_token(ENROLLMENT_PREFIX)
        expires = datetime.now(UTC) + timedelta(seconds=req.ttl_seconds)
        record = self.store.add_enrollment_token(
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
        if self.store.consume_enrollment_token(hash_token(req.enrollment_token)) is None:
            raise AgataError(
                ErrorCode.UNAUTHENTICATED, "enrollment token unknown, expired or used up"
            )
        try:
            enrolled = self.store.get_device(req.user_id).credential_hash is not None
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
        self.store.upsert_device(req.user_id)
        # The check above answers most callers; this one decides between two enrollments
        # of a new id arriving at once on different replicas.
        if not self.store.claim_device_credential(req.user_id, hash_token(credential)):
            raise AgataError(
                ErrorCode.CONFLICT,
                f"device {req.user_id} was enrolled by another request just now",
            )
        self.event(ops.ENROLL_DEVICE, "Device enrolled", user_id=req.user_id)
        return {"user_id": req.user_id, "credential": credential}

    async def revoke_device(self, req: ops.UserRef) -> dict[str, Any]:
        """End a device's credential (a lost or stolen device); its record stays, and it
        may enroll again with a new enrollment token."""
        device = self.store.get_device(req.user_id)
        had = device.credential_hash is not None
        if had:
            self.store.set_device_credential(req.user_id, None)
        self.event(ops.REVOKE_DEVICE, "Device credential revoked", user_id=req.user_id)
        await self.notifier.notify(DeviceChanged(user_id=req.user_id, revoked=True))
        return {"user_id": req.user_id, "revoked": had}

    async def resolve_credential(self, req: ops.ResolveCredential) -> dict[str, Any]:
        """Who holds the token with this hash: an operator, a device, or nobody (401)."""
        operator = self.store.find_operator_token_by_hash(req.token_sha256)
        if operator is not None:
            return {"kind": "operator", "name": operator.name, "token_id": operator.token_id}
        user_id = self.store.find_device_by_credential_hash(req.token_sha256)
        if user_id is not None:
            return {"kind": "device", "user_id": user_id}
        raise AgataError(ErrorCode.UNAUTHENTICATED, "unknown or revoked token")
