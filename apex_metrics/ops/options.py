"""Flags that override a setting, and how a command resolves them through ``Settings``.

One rule for every command: a flag that stands for a setting defaults to ``None`` and does not
read the environment itself. The command lays the flags it was given over the process's
``Settings`` (``settings_with``), which read ``APEX_*`` variables, ``.env.local`` and ``.env``,
then uses the result. So a flag beats its variable, the variable beats the files, the files beat
the default: one place decides, and a value from any source is validated by ``Settings``.
``--help`` still names the variable of each such flag (``setting_option``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from apex_metrics.settings import Settings, env_name, get_settings


def setting_option(field: str, *param_decls: str, help: str, **kwargs: Any) -> Any:
    """A ``typer.Option`` for the setting ``field``: no ``envvar`` of its own (the command
    resolves it through ``settings_with``); ``--help`` names ``APEX_<FIELD>``."""
    if field not in Settings.model_fields:
        raise ValueError(f"no setting named {field!r}")
    return typer.Option(*param_decls, help=f"{help}  [env var: {env_name(field)}]", **kwargs)


def settings_with(**flags: Any) -> Settings:
    """The settings of this process with the given flags laid over them; a flag that was not
    given (``None``) leaves its setting as configured. Keys are ``Settings`` field names."""
    unknown = sorted(set(flags) - set(Settings.model_fields))
    if unknown:
        raise ValueError(f"no setting named {', '.join(unknown)}")
    settings = get_settings()
    update = {name: value for name, value in flags.items() if value is not None}
    return settings.model_copy(update=update) if update else settings


DatabaseUrlOption = Annotated[
    str | None,
    setting_option(
        "database_url",
        "--database-url",
        help="PostgreSQL URL (also read from .env.local / .env).",
    ),
]

DataverseUrlOption = Annotated[
    str | None,
    setting_option(
        "dataverse_url",
        "--url",
        help="Dataverse environment URL (also read from .env.local / .env).",
    ),
]
