"""Typed settings: a YAML file, then environment overrides, then validation.

See ``loader`` for the override and ``*_file`` schemes.
"""

from bridge.config.core import (
    HttpSettings,
    LinkSettings,
    LoggingSettings,
    MongoSettings,
    ReadinessSettings,
    Settings,
    ShutdownSettings,
)
from bridge.config.loader import ENV_PREFIX, load_settings
from bridge.config.matrix import MatrixSettings
from bridge.config.teams import TeamsSettings

__all__ = [
    "ENV_PREFIX",
    "HttpSettings",
    "LinkSettings",
    "LoggingSettings",
    "MatrixSettings",
    "MongoSettings",
    "ReadinessSettings",
    "Settings",
    "ShutdownSettings",
    "TeamsSettings",
    "load_settings",
]
