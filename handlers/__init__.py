"""The verbs: plain functions ``handler(ctx, args) -> dict``, grouped by family."""
