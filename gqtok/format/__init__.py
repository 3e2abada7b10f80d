"""gqtok's binary formats: the .gq container, the entropy coder, model cards and token
shards (docs/format.md, docs/tokens.md). Importable without torch."""
