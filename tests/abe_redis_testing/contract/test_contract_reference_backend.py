"""The whole contract, every capability declared, against the in-memory reference backend: no skips."""

from __future__ import annotations

from contract_inmemory_backends import ReferenceContract


class TestReferenceBackendContract(ReferenceContract):
    pass
