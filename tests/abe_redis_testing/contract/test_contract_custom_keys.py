"""An author whose backend only takes keys of one shape overrides ``contract_key``; every test
(including the state machine) must then publish only such keys, or TenantKeysBackend refuses."""

from __future__ import annotations

from typing import ClassVar

from contract_inmemory_backends import ReferenceBackend, ReferenceContract, TenantKeysBackend


class TestContractKeysAreOverridable(ReferenceContract):
    backend_class: ClassVar[type[ReferenceBackend]] = TenantKeysBackend

    def contract_key(self, run_id: str, name: str) -> str:
        return f"tenant:{run_id}:{name}"
