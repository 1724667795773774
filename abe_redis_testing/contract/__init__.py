"""The abe message-queue backend contract, shipped as a base class your own tests inherit.

What a backend author needs::

    import pytest
    from abe_redis_testing.contract import Capabilities, QueueBackendContract
    from my_backend import MyBackend

    class TestMyBackendContract(QueueBackendContract):
        capabilities = Capabilities.all(redelivery_timeout=1.0)  # or only what you support

        @pytest.fixture
        def backend_factory(self, my_broker_url):
            return lambda: MyBackend(url=my_broker_url)  # fresh instance, same broker

Every capability you do not declare turns its tests into skips naming it. ``-p
abe_redis_testing`` adds ``--abe-redis-contract-timeout`` (ini ``abe_redis_contract_timeout``)
to raise the suite's one timeout for a slow broker. Without a test module at all,
:func:`run_contract` runs the suite against ``"module:Class"`` and returns a :class:`ContractReport`
(:func:`render_report` prints it). The settings of a subclass are listed in ``docs/contract.md``.
"""

from __future__ import annotations

from ._capabilities import Capabilities
from ._harness import BackendFactory
from ._runner import ContractReport, render_report, run_contract
from ._suite import QueueBackendContract

__all__ = [
    "BackendFactory",
    "Capabilities",
    "ContractReport",
    "QueueBackendContract",
    "render_report",
    "run_contract",
]
