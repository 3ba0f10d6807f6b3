"""dssbt: compress S4 models with diagonal state-space (DSS) layers by balanced truncation."""

__version__ = "0.1.0"
