"""JSON Schemas: one per RPC method's args (rpc/) and per event payload (events/).

This package holds data only; ``worker.core.schemas`` loads and compiles it.
"""
