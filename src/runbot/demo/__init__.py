"""The `make demo` world: a tiny service whose disk fills and whose error ratio rises, to be fixed by runbooks."""
