"""Dynamic masking: lineage, data-class detectors, strategies, row rewriting.

Pure: no sockets, no event loop, no database connection. The catalog the
planner resolves columns with arrives as data (:mod:`.catalog` builds it from
query results the shell fetched); everything here is data in, data out.

- :mod:`.detect`: data-class detectors (email, card with Luhn, US SSN, phone,
  IBAN with mod-97, IPv4/IPv6) over bytes, with cheap pre-filters.
- :mod:`.strategies`: redact, partial, email, hash (keyed HMAC), null, on the
  text and binary forms of each type.
- :mod:`.lineage`: which source columns feed each output column of a
  statement, read from its parse tree; which columns it filters by and which
  it moves into a write.
- :mod:`.catalog`: table and view columns by OID and by name.
- :mod:`.plan`: a statement's lineage, the catalog and the rules -> what to
  do with each result column; refusals of predicates and data movement.
- :mod:`.rows`: DataRow, COPY and error/notice rewriting.
"""
