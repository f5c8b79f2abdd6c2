"""Streaming ingest: Ray reader actors stream WebDataset shards, decode, crop, and batch.

`Loader` (one per train worker) owns its readers (`ShardReader`, as Ray actors via
`pipeline.ingest.actor.ReaderActor`) and yields exactly the planned batches per epoch.
"""

from pipeline.ingest.loader import Loader
from pipeline.ingest.reader import CorruptDataError, ShardReader

__all__ = ["CorruptDataError", "Loader", "ShardReader"]
