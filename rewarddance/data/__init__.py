"""Shard format, writers, streaming DataModules, importers and the shapes world."""
