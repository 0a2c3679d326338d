"""citrus_v.eval.metrics."""
