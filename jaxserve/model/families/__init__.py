"""One module per model family, each defining FAMILY; jaxserve/model/registry.py lists them."""
