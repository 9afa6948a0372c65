"""Fault injection: kills, outages, broker restarts, timers across restarts, clock skew."""
