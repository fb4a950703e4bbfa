"""Stage `verify`: derived rules vs the catalog, symbolically and numerically."""
