"""A worker's queue manager, built from the configuration ([delivery], [[routes]], [queue],
[[shaping]]) and rebuilt on reload for the attempts that start after it."""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from mailwarden.config import Config
from mailwarden.config.queue import shaping_rules
from mailwarden.delivery import dane
from mailwarden.delivery.mta_sts import MtaSts
from mailwarden.delivery.routes import RouteTable
from mailwarden.delivery.tls_selection import TlsPolicySelector
from mailwarden.policy.script import PolicyScript
from mailwarden.queue.limits import NodeLimits
from mailwarden.queue.manager import ManagerSettings, QueueManager
from mailwarden.queue.plan import Planner
from mailwarden.spool.store import SpoolStore
from mailwarden.spool.writer import MAX_HEADER_BYTES


def manager_settings(config: Config) -> ManagerSettings:
    delivery, queue = config.delivery, config.queue
    return ManagerSettings(
        deliver=queue.deliver,
        schedule=queue.retry_schedule(),
        reporting_mta=config.node.hostname,
        lease_duration=queue.lease_duration,
        poll_interval=queue.poll_interval,
        max_bytes_in_flight=queue.max_bytes_in_flight,
        # Bodies up to memory_threshold live in the row, headers up to MAX_HEADER_BYTES.
        # Twice: the row's bytes and, once sent, their joined copy.
        largest_inline=2 * (config.spool.memory_threshold + MAX_HEADER_BYTES),
        connect_timeout=delivery.connect_timeout,
        mx_address_limit=delivery.mx_address_limit,
        mx_session_limit=delivery.mx_session_limit,
        idle_timeout=delivery.idle_timeout,
        defaults=queue.shaping_defaults(
            delivery.max_connections_per_destination, delivery.max_messages_per_connection
        ),
        allow_ip_literals=delivery.allow_ip_literals,
        ip_version=delivery.ip_version,
        port=delivery.port,
        hook_timeout=max(s.limits.hook_timeout for s in config.servers),
        shaping=shaping_rules(config.shaping),
        hold_retention=queue.hold_retention,
        hold_sweep_interval=queue.hold_sweep_interval,
    )


def planner(config: Config) -> Planner:
    return Planner(
        routes=RouteTable.from_config(config),
        helo=config.delivery.helo or config.node.hostname,
        shaping_metadata=_shaping_metadata(config),
        shaping_by_domain=any(
            "domain" in (*rule.fields, *rule.match) for rule in shaping_rules(config.shaping)
        ),
    )


def _shaping_metadata(config: Config) -> tuple[str, ...]:
    """The metadata keys any [[shaping]] rule groups by or matches on: destinations keep
    messages apart by these values, so each connection carries one tenant's (or job's)."""
    keys: set[str] = set()
    for rule in shaping_rules(config.shaping):
        for name in (*rule.fields, *rule.match):
            if name.startswith("metadata."):
                keys.add(name.removeprefix("metadata."))
    return tuple(sorted(keys))


def message_id_source(worker: int) -> Callable[[], str]:
    """Ids for the messages delivery queues itself (DSNs), shaped like the server's."""
    counter = itertools.count(1 << 15)  # the upper half: never the server's own sequence
    return lambda: f"{time.time_ns() // 1000:x}{worker:02x}{next(counter) & 0xFFFF:04x}"


def new_manager(
    config: Config, store: SpoolStore, worker: int, script_for: Callable[[str], PolicyScript]
) -> QueueManager:
    limits = NodeLimits(Path(config.node.data_dir) / "queue")
    dane.configure(config.delivery.dane)
    return QueueManager(
        store,
        manager_settings(config),
        planner(config),
        limits,
        script_for=script_for,
        owner=f"{socket.gethostname()}:{os.getpid()}",
        new_id=message_id_source(worker),
        tls_selector=TlsPolicySelector(mta_sts=mta_sts(config)),
    )


def mta_sts(config: Config, previous: MtaSts | None = None) -> MtaSts | None:
    """The worker's MTA-STS cache when ``[delivery] mta_sts`` is on (``previous`` kept, with
    its policies, across a reload), persisted in ``<data_dir>/mta-sts.sqlite``."""
    if not config.delivery.mta_sts:
        return None
    ca_file = config.delivery.mta_sts_ca_file
    if previous is not None:
        previous.ca_file = ca_file
        return previous
    return MtaSts.in_data_dir(Path(config.node.data_dir), ca_file=ca_file)


def reconfigure(manager: QueueManager, config: Config) -> None:
    """Reload: attempts planned from now on follow the new settings; attempts under way and
    open connections finish as they began."""
    dane.configure(config.delivery.dane)
    manager.reconfigure(manager_settings(config), planner(config))
    selector = manager.tls_selector
    selector.mta_sts = mta_sts(config, selector.mta_sts)
