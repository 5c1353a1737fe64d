"""Event notifications to profile updaters: in-process, or Redis Streams at scale."""
