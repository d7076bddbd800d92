"""Placeholder until the planner lands."""


def add_arguments(parser) -> None:
    pass
