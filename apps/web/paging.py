"""Helpers both groups of pages share."""

from __future__ import annotations

from django.core.paginator import Page, Paginator
from django.http import HttpRequest


def page_of(request: HttpRequest, rows, *, per_page: int = 50, param: str = "page") -> Page:
    """The requested page of ``rows``; a missing or bad number gives the nearest page, so
    links stay valid."""
    return Paginator(rows, per_page).get_page(request.GET.get(param))


def server_url(request: HttpRequest) -> str:
    """This portal's absolute base URL as a worker must be told it, without trailing slash."""
    return request.build_absolute_uri("/").rstrip("/")
