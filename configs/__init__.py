"""tunebench's default configs (defaults, tasks, suites, planner presets and GPUs), installed as package data."""
