"""Sub-commands of ``steward``; each module exposes ``register(subparsers)``."""
