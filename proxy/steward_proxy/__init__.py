"""Steward's data plane: the governed PostgreSQL proxy and its command line.

Pure parts (``wire``, ``sql``, ``policy``, ``masking``) never touch a socket;
the asyncio shell (``server``, ``session``, ``upstream``, ``admin``) does.
"""

__version__ = "0.1.0"
