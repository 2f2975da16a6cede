"""Dependencies declared once, so every endpoint signature reads like a sentence."""

from typing import Annotated

from fastapi import Depends, Request

from app.core.deployments import DeploymentService
from app.core.training import TrainingService
from app.settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _training(request: Request) -> TrainingService:
    return request.app.state.training


def _deployments(request: Request) -> DeploymentService:
    return request.app.state.deployments


SettingsDep = Annotated[Settings, Depends(_settings)]
TrainingDep = Annotated[TrainingService, Depends(_training)]
DeploymentsDep = Annotated[DeploymentService, Depends(_deployments)]
