"""Data stages: read sources, clean, filter, deduplicate and split (`prepare`), then tokenize and load.

Modules: `sources` (inputs → documents), `builtin` (the `builtin:python-docs` corpus), `clean`,
`filters` (Gopher/C4 quality rules), `dedup` (exact + MinHash/LSH), `prepare` (the whole
`data prepare` run); `tokenize`, `loader` and `inspect` handle token shards.
"""

from scratchlm.data.sources import Document, SourceOptions, iter_documents

__all__ = ["Document", "SourceOptions", "iter_documents"]
