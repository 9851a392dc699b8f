"""Model-specific RAVEL instances: what a model knows, its labels, and base/source pairs."""
