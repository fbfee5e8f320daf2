"""Runbooks: automation run from chat, safely (permissions, approvals, no shell), on record."""
