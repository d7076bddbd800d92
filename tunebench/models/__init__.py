"""Models: finding and loading pretrained checkpoints (hub), the classifier every method trains, causal LMs for
generate tasks, parameter helpers, and where a model keeps its blocks. Imports errors, files, data only."""
