"""Dependencies declared once, so every endpoint signature reads like a sentence."""

from typing import Annotated

from fastapi import Depends, Request

from app.core.deployments import DeploymentService
from app.core.openai_proxy import OpenAIProxy
from app.core.proxy import PredictProxy
from app.core.training import TrainingService
from app.settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _training(request: Request) -> TrainingService:
    return request.app.state.training


def _deployments(request: Request) -> DeploymentService:
    return request.app.state.deployments


def _proxy(request: Request) -> PredictProxy:
    return request.app.state.proxy


def _openai_proxy(request: Request) -> OpenAIProxy:
    return request.app.state.openai_proxy


SettingsDep = Annotated[Settings, Depends(_settings)]
TrainingDep = Annotated[TrainingService, Depends(_training)]
DeploymentsDep = Annotated[DeploymentService, Depends(_deployments)]
ProxyDep = Annotated[PredictProxy, Depends(_proxy)]
OpenAIProxyDep = Annotated[OpenAIProxy, Depends(_openai_proxy)]
