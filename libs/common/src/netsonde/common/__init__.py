"""Shared foundation of every Netsonde service: bus contract, config, lifecycle, storage access."""
