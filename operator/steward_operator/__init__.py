"""Steward's Kubernetes operator (kopf).

It compiles DatabaseAccessPolicies and MaskingRules into signed policy
bundles with the proxy's own compiler, injects the proxy as a native sidecar
into pods that ask for it, pushes changed bundles to running sidecars, and
validates policies at admission.

Layers: ``targets`` and ``injection`` are pure (documents and pods in, bundles,
status and JSON patches out); ``kube``, ``push`` and ``leader`` talk to the API
server and to sidecars; ``reconcile`` orchestrates them; ``handlers`` are the
thin kopf handlers; ``main`` runs it all; ``cli`` reads arguments without
importing any of it.
"""
