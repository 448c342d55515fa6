"""Shards and what reads and writes them: schema, writer, streaming (``stream/``), DataModules, prompt sources and
dataset importers (``importers/``)."""
