"""Steward's Kubernetes operator (kopf): policy compilation, sidecar injection,
policy push and audit collection. The handlers arrive with the operator work;
this package holds the import name ``steward_operator`` until then.
"""
