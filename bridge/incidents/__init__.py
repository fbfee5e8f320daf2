"""Incidents: declared, run and resolved from chat; the record behind the timeline API,
the incident page and the postmortem."""
