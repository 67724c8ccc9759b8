"""The `netsonde` command: run services, the all-in-one host, and a client for the API."""
