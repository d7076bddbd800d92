"""Data: the task registry and file reading (tasks), generate-task examples (generate), tokenization and batches
(batching). Imports errors and files only."""
