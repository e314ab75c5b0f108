"""The dynamic partitions: one partition per landing batch (its folder name)."""

import dagster as dg

batches_partitions = dg.DynamicPartitionsDefinition(name="batches")
