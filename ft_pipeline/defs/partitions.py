"""Partitions of the per-file assets."""

import dagster as dg

#: Name of the dynamic partitions (a plain str: ``DynamicPartitionsDefinition.name`` is Optional).
LOG_FILES_PARTITION = "log_files"

# One partition per landed log file; the key is the file's path relative to the landing folder.
log_files_partitions = dg.DynamicPartitionsDefinition(name=LOG_FILES_PARTITION)
