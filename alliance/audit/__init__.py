"""The audit trail: AuditEvents in the IHE BALP shape, hash-chained, append-only."""
