"""The admin's view: a dashboard, a REST API under ``/api``, metrics, health and readiness."""

from dicom_node.web.app import create_app
from dicom_node.web.server import WebServerHandle, start_web_server

__all__ = ["WebServerHandle", "create_app", "start_web_server"]
