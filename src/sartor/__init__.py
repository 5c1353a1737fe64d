"""Sartor: a self-hosted personalization engine."""

from sartor.engine import CreatedWorkspace, Engine, IngestResult, NotFound
from sartor.workspace import Workspace, WorkspaceSettings

__all__ = [
    "CreatedWorkspace",
    "Engine",
    "IngestResult",
    "NotFound",
    "Workspace",
    "WorkspaceSettings",
]
__version__ = "0.1.0"
