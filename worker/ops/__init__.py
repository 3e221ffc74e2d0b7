"""Operating the worker: what it tells its supervisor (systemd) and its watchers (metrics)."""
