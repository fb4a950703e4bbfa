"""The catalog of published models (nlc/catalog/models.py)."""
