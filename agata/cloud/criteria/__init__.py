"""Selection criteria: the expression language, what its validator reports, the parts the
store's indexes answer, and the operator's device filter built on it."""
