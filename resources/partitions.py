"""The one partitioning of pixelsift: each immediate subfolder of the images root is a batch."""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

# Keys are checked by resources.batch_keys.validate_batch_key wherever they come in.
batch_partitions = DynamicPartitionsDefinition(name="batch")
