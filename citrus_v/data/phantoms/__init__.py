"""citrus_v.data.phantoms."""
