"""Shipped data: the toy-clip weights and their training record. Installed as the package
``pipeline.data`` (pyproject.toml maps this folder there), so a non-editable install finds them."""
