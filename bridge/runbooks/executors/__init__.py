"""Executors: how a runbook's work is done (an HTTP request, a process, a Kubernetes Job)."""
