"""Data stages: read sources, clean, filter, deduplicate and split (`prepare`), then tokenize and load.

Modules: `sources` (inputs → documents), `builtin` (the `builtin:python-docs` corpus), `clean`,
`filters` (Gopher/C4 quality rules), `dedup` (exact + MinHash/LSH), `prepare` (the whole
`data prepare` run); `tokenize`, `loader` and `inspect` handle token shards.
"""

# The tokens dir format (`meta.json`'s `format_version`) that `tokenize` writes and `loader` reads.
# Here, where both can import it: the loader pulls in torch, which tokenizing does not need.
TOKENS_FORMAT_VERSION = 1

from scratchlm.data.sources import Document, SourceOptions, iter_documents  # noqa: E402

__all__ = ["TOKENS_FORMAT_VERSION", "Document", "SourceOptions", "iter_documents"]
