"""Partitions of the per-file assets."""

import dagster as dg

# One partition per landed log file; the key is the file's path relative to the landing folder.
log_files_partitions = dg.DynamicPartitionsDefinition(name="log_files")
