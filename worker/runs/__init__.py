"""The life of a run, written once: the ledger bound to its target, the pool between a source
and a sink, the guardrails, the record, the report, the notification and the exit status; and
the same run for a runbook's Python (``cancel_orders``)."""
