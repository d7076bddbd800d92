"""Errors a user can fix: the CLI prints them on one line and exits with status 2."""


class UserError(Exception):
    """Bad input: an unknown name, a missing file, a malformed value."""


def unknown_choice(kind: str, value: object, choices: list[str] | tuple[str, ...]) -> UserError:
    return UserError(f"unknown {kind} {value!r}; choose one of: {', '.join(sorted(choices))}")
