"""Operations: what an operator watches the worker by (Prometheus metrics)."""
