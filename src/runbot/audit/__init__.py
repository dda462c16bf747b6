"""Tamper-evident audit trail: append with a hash chain, verify, export."""
