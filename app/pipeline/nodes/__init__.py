"""Node types, one module per family; `registry.py` lists them (see `base.ActionNode`)."""
