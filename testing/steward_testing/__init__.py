"""Test kits: throwaway PostgreSQL servers, the proxy in front of one, a certificate authority.

Used by the tests, the benchmarks and ``steward demo``. It is part of the
development install (``pip install -e '.[dev]'``) only: the images copy
``proxy/`` and ``operator/``, never ``testing/``.
"""
