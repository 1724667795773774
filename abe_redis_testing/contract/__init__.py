"""The abe message-queue backend contract, shipped as base classes your own tests inherit.

The ten lines a backend author writes (a plain test module, no conftest needed)::

    import pytest
    from abe_redis_testing.contract import Capabilities, QueueBackendContract
    from my_backend import MyBackend

    class TestMyBackendContract(QueueBackendContract):
        capabilities = Capabilities.all(redelivery_timeout=1.0)  # or only what you support
        timeout = 10.0

        @pytest.fixture
        def backend_factory(self, my_broker_url):
            return lambda: MyBackend(url=my_broker_url)  # fresh instance, same broker

Every capability you do not declare turns its tests into skips naming it. ``-p
abe_redis_testing`` adds ``--abe-redis-contract-timeout`` (ini ``abe_redis_contract_timeout``)
to raise the suite's one timeout for a slow broker. Without a test module at all,
:func:`run_contract` runs the suite against ``"module:Class"`` and returns a :class:`ContractReport`.
"""

from __future__ import annotations

from ._capabilities import CAPABILITY_DESCRIPTIONS, Capabilities
from ._harness import BackendFactory
from ._machine import (
    JSON_VALUES,
    QueueStateMachine,
    SyncQueueDriver,
    make_queue_state_machine,
    run_queue_state_machine,
)
from ._runner import ContractOutcome, ContractReport, render_report, report_table, run_contract
from ._suite import QueueBackendContract

__all__ = [
    "CAPABILITY_DESCRIPTIONS",
    "JSON_VALUES",
    "BackendFactory",
    "Capabilities",
    "ContractOutcome",
    "ContractReport",
    "QueueBackendContract",
    "QueueStateMachine",
    "SyncQueueDriver",
    "make_queue_state_machine",
    "render_report",
    "report_table",
    "run_contract",
    "run_queue_state_machine",
]
