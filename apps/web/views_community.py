"""The volunteer side of the site: home, joining and the account page, teams, leaderboards, the
stats export and the worker download. Each view parses, calls one service or a few selectors,
and renders.
"""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import (
    LoginView,
    LogoutView,
    PasswordChangeView,
    PasswordResetConfirmView,
    PasswordResetView,
)
from django.core.paginator import EmptyPage, PageNotAnInteger, Paginator
from django.db.models import QuerySet
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views.decorators.cache import cache_control, never_cache
from django.views.decorators.http import require_GET, require_POST, require_safe

from apps.accounts import selectors as account_selectors
from apps.accounts import services as account_services
from apps.accounts.models import Volunteer
from apps.common.errors import ApplicationError
from apps.credit import selectors as credit_selectors
from apps.credit.services import CREDIT_HALF_LIFE_SECONDS, SECONDS_PER_DAY
from apps.workunits.scheduler import host_detach

from . import downloads, login_limit
from . import selectors_community as community_selectors
from .forms import JoinForm, TeamCreateForm, TeamSearchForm
from .paging import page_of, server_url
from .svg_charts import line_chart

PER_PAGE = 50
STATS_PER_PAGE = 1000
# The plaintext account key travels from the action that made it to the one page that shows it
# in a signed, short-lived cookie bound to the user, which that page deletes: a reload shows
# only the hint. Not in the session: sessions live in the database, which must never hold a
# plaintext key (only its sha256), not even for the moment between a redirect and a page.
ACCOUNT_KEY_COOKIE = "account_key_once"
ACCOUNT_KEY_COOKIE_SECONDS = 600
_ACCOUNT_KEY_SALT = "apps.web.account_key_once"
LOGIN_URL = reverse_lazy("login")

# Which form field a service's refusal belongs to (others are shown above the form).
JOIN_ERROR_FIELDS = {"invalid_username": "username", "username_taken": "username",
                     "invalid_password": "password1", "invalid_country": "country",
                     "invalid_display_name": "display_name"}
TEAM_ERROR_FIELDS = {"invalid_team_description": "description"}


def _hand_key_over(response: HttpResponse, *, user: Any, account_key: str) -> HttpResponse:
    response.set_signed_cookie(
        ACCOUNT_KEY_COOKIE, f"{user.pk}:{account_key}", salt=_ACCOUNT_KEY_SALT,
        max_age=ACCOUNT_KEY_COOKIE_SECONDS, path=str(reverse("account")), httponly=True,
        secure=settings.SESSION_COOKIE_SECURE, samesite="Strict")
    return response


def _take_key(request: HttpRequest) -> str | None:
    """The key handed over to this user, if any (the caller deletes the cookie)."""
    value = request.get_signed_cookie(ACCOUNT_KEY_COOKIE, default=None, salt=_ACCOUNT_KEY_SALT,
                                      max_age=ACCOUNT_KEY_COOKIE_SECONDS)
    user_pk, _, account_key = (value or "").partition(":")
    return account_key if account_key and user_pk == str(request.user.pk) else None


def _volunteer_or_404(request: HttpRequest) -> Volunteer:
    volunteer = account_selectors.volunteer_for_user(request.user)
    if volunteer is None:
        raise Http404("This account has no volunteer profile.")
    return volunteer


# --- home -----------------------------------------------------------------------------------


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    return render(request, "web/community/home.html", {
        "figures": credit_selectors.site_figures(now=now),
        "campaigns": credit_selectors.campaigns_current(),
    })


# --- joining, logging in and out, the account page ------------------------------------------


def join(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("account")
    if request.method == "POST" and login_limit.address_blocked(request, "join"):
        form = _refused(JoinForm(request.POST), "Too many sign-ups from your address. Try "
                        f"again in {_join_window_minutes()} minutes.")
        return _too_many(request, "registration/join.html", {"form": form},
                         retry_after=login_limit.join_window())
    form = JoinForm(request.POST or None)
    if request.method == "POST":
        # Every attempt counts: a refused taken name also tells something.
        login_limit.address_attempted(request, "join")
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            volunteer, account_key = account_services.volunteer_register(
                username=data["username"], email=data["email"], password=data["password1"],
                display_name=data["display_name"], country=data["country"])
        except ApplicationError as exc:
            form.add_error(JOIN_ERROR_FIELDS.get(exc.extra.get("code")), exc.message)
        else:
            login(request, volunteer.user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, f"Welcome, {volunteer.display_name}! Your account is "
                                      "ready: attach your first computer below.")
            return _hand_key_over(redirect("account"), user=volunteer.user,
                                  account_key=account_key)
    return render(request, "registration/join.html", {"form": form})


class PortalLoginView(LoginView):
    """Django's login, with failed attempts limited per address and user name
    (``login_limit``): once blocked, the password is not even checked, and the answer is 429."""

    template_name = "registration/login.html"
    redirect_authenticated_user = True
    next_page = reverse_lazy("account")

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        username = str(request.POST.get("username", ""))[:150]
        if login_limit.login_blocked(request, username):
            form = _refused(self.get_form(), "Too many failed logins for this user name from "
                            f"your address. Try again in {_window_minutes()} minutes.")
            return _too_many(request, self.template_name, self.get_context_data(form=form),
                             retry_after=login_limit.failure_window())
        return super().post(request, *args, **kwargs)  # failures count by signal


class PortalLogoutView(LogoutView):
    next_page = reverse_lazy("home")


@method_decorator(login_required(login_url=LOGIN_URL), name="dispatch")
class PortalPasswordChangeView(PasswordChangeView):
    # Checked here with our login URL: Django's own check uses settings.LOGIN_URL.
    template_name = "registration/password_change_form.html"
    success_url = reverse_lazy("account")

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if login_limit.password_change_blocked(request.user.pk):
            # Bound to nothing: the empty old password fails "required", so no hash is checked.
            form = _refused(self.get_form_class()(request.user, data={}),
                            f"Too many wrong passwords. Try again in {_window_minutes()} minutes.")
            return _too_many(request, self.template_name, self.get_context_data(form=form),
                             retry_after=login_limit.failure_window())
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        if "old_password" in form.errors:
            login_limit.password_change_failed(self.request.user.pk)
        return super().form_invalid(form)

    def form_valid(self, form: Any) -> HttpResponse:
        messages.success(self.request, "Your password was changed.")
        return super().form_valid(form)


class PortalPasswordResetView(PasswordResetView):
    """Django's reset by e-mail (no answer tells whether the address has an account), limited
    per address like sign-ups, and off where no mail server is set up."""

    template_name = "registration/password_reset_form.html"
    email_template_name = "registration/password_reset_email.txt"
    subject_template_name = "registration/password_reset_subject.txt"
    success_url = reverse_lazy("password_reset_done")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {**super().get_context_data(**kwargs),
                "enabled": settings.PASSWORD_RESET_ENABLED}

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.PASSWORD_RESET_ENABLED:
            return self.get(request, *args, **kwargs)
        if login_limit.address_blocked(request, "password-reset"):
            form = _refused(self.get_form(), "Too many reset requests from your address. Try "
                                             f"again in {_join_window_minutes()} minutes.")
            return _too_many(request, self.template_name, self.get_context_data(form=form),
                             retry_after=login_limit.join_window())
        login_limit.address_attempted(request, "password-reset")
        return super().post(request, *args, **kwargs)


class PortalPasswordResetConfirmView(PasswordResetConfirmView):
    template_name = "registration/password_reset_confirm.html"
    success_url = reverse_lazy("password_reset_complete")


def _window_minutes() -> int:
    return math.ceil(login_limit.failure_window() / 60)


def _join_window_minutes() -> int:
    return math.ceil(login_limit.join_window() / 60)


def _refused(form: Any, message: str) -> Any:
    """``form`` showing only ``message``: nothing the visitor sent was checked."""
    form.errors.clear()
    form.add_error(None, message)
    return form


def _too_many(request: HttpRequest, template: str, context: dict[str, Any], *,
              retry_after: int) -> HttpResponse:
    response = render(request, template, context, status=429)
    response["Retry-After"] = str(retry_after)
    return response


@never_cache  # the page may carry the account key: no browser or proxy may keep it
@login_required(login_url=LOGIN_URL)
@require_GET  # not HEAD: that would consume the one showing of a new key without showing it
def account(request: HttpRequest) -> HttpResponse:
    volunteer = account_selectors.volunteer_for_user(request.user)
    if volunteer is None:
        return render(request, "web/community/account_missing.html")
    now = timezone.now()
    account_key = _take_key(request)
    history = credit_selectors.credit_history(volunteer=volunteer, now=now)
    days = [point.day for point in history]
    response = render(request, "web/community/account.html", {
        "volunteer": volunteer,
        "account_key": account_key,
        "server_url": server_url(request),
        "hosts": page_of(request, credit_selectors.account_hosts(volunteer=volunteer, now=now),
                       param="hosts_page"),
        "rac_now": credit_selectors.rac_now(holder=volunteer, now=now),
        "credit_chart": line_chart(days=days, values=[p.total_credit for p in history],
                                   label="Total credit by day"),
        "rac_chart": line_chart(days=days, values=[p.rac for p in history],
                                label="Recent average credit by day", color="#0f8a6c"),
        "history_points": len(history),
    })
    if ACCOUNT_KEY_COOKIE in request.COOKIES:  # shown once: a reload shows only the hint
        response.delete_cookie(ACCOUNT_KEY_COOKIE, path=str(reverse("account")),
                               samesite="Strict")
    return response


@login_required(login_url=LOGIN_URL)
@require_POST
def account_key_rotate(request: HttpRequest) -> HttpResponse:
    volunteer = _volunteer_or_404(request)
    try:
        account_key = account_services.account_key_rotate(volunteer=volunteer)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("account")
    messages.success(request, "You have a new account key. The old one no longer attaches "
                              "computers; those already attached keep working.")
    return _hand_key_over(redirect("account"), user=request.user, account_key=account_key)


@login_required(login_url=LOGIN_URL)
@require_POST
def host_retire(request: HttpRequest, host_id: int) -> HttpResponse:
    volunteer = _volunteer_or_404(request)
    host = account_selectors.host_owned_by(volunteer=volunteer, host_id=host_id)
    if host is None:
        raise Http404("No such host on your account.")
    try:
        given_back = host_detach(host=host)  # as `strategy-worker detach` does
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{host.name} is retired: it can no longer ask for work"
                         + (f"; its {given_back} unfinished task(s) went to other hosts."
                            if given_back else "."))
    return redirect("account")


# --- teams ----------------------------------------------------------------------------------


@require_safe
def team_list(request: HttpRequest) -> HttpResponse:
    search = TeamSearchForm(request.GET or None)
    query = search.cleaned_data["q"].strip() if search.is_valid() else ""
    return render(request, "web/community/team_list.html", {
        "search": search,
        "query": query,
        "teams": page_of(request, account_selectors.team_list(search=query)),
        "volunteer": account_selectors.volunteer_for_user(request.user),
    })


@login_required(login_url=LOGIN_URL)
def team_create(request: HttpRequest) -> HttpResponse:
    volunteer = _volunteer_or_404(request)
    form = TeamCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            team = account_services.team_create(founder=volunteer, **form.cleaned_data)
        except ApplicationError as exc:
            form.add_error(TEAM_ERROR_FIELDS.get(exc.extra.get("code"), "name"), exc.message)
        else:
            messages.success(request, f"You founded {team.name} and are its first member.")
            return redirect("team_detail", team_id=team.pk)
    return render(request, "web/community/team_create.html",
                  {"form": form, "volunteer": volunteer})


@require_safe
def team_detail(request: HttpRequest, team_id: int) -> HttpResponse:
    team = account_selectors.team_get(team_id=team_id)
    if team is None:
        raise Http404("No such team.")
    now = timezone.now()
    return render(request, "web/community/team_detail.html", {
        "team": team,
        "team_rac_now": credit_selectors.rac_now(holder=team, now=now),
        "members": page_of(request, credit_selectors.team_members_ranked(team=team, now=now)),
        "volunteer": account_selectors.volunteer_for_user(request.user),
    })


@require_safe
def volunteer_detail(request: HttpRequest, volunteer_id: int) -> HttpResponse:
    """A volunteer's public page (BOINC's show_user): what the stats export tells, for people."""
    now = timezone.now()
    volunteer = community_selectors.volunteer_public(volunteer_id=volunteer_id, now=now)
    if volunteer is None:
        raise Http404("No such volunteer.")
    history = credit_selectors.credit_history(volunteer=volunteer, now=now)
    days = [point.day for point in history]
    rank = credit_selectors.leaderboard_position(
        credit_selectors.leaderboard_users(order="total", now=now), order="total",
        pk=volunteer.pk) if volunteer.total_credit > 0 else None
    viewer = account_selectors.volunteer_for_user(request.user)
    return render(request, "web/community/volunteer_detail.html", {
        "profile": volunteer,
        "is_me": viewer is not None and viewer.pk == volunteer.pk,
        "rank": rank,
        "hosts": page_of(request, community_selectors.volunteer_public_hosts(
            volunteer=volunteer, now=now)),
        "strategies": community_selectors.volunteer_strategies_found(volunteer=volunteer),
        "credit_chart": line_chart(days=days, values=[p.total_credit for p in history],
                                   label="Total credit by day"),
    })


@login_required(login_url=LOGIN_URL)
@require_POST
def team_join(request: HttpRequest, team_id: int) -> HttpResponse:
    volunteer = _volunteer_or_404(request)
    team = account_selectors.team_get(team_id=team_id)
    if team is None:
        raise Http404("No such team.")
    try:
        account_services.team_join(volunteer=volunteer, team=team)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"You joined {team.name}.")
    return redirect("team_detail", team_id=team.pk)


@login_required(login_url=LOGIN_URL)
@require_POST
def team_leave(request: HttpRequest) -> HttpResponse:
    volunteer = _volunteer_or_404(request)
    team = volunteer.team
    try:
        account_services.team_leave(volunteer=volunteer)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("team_list")
    messages.success(request, f"You left {team.name}.")
    return redirect("team_detail", team_id=team.pk)


# --- leaderboards ---------------------------------------------------------------------------

LEADERBOARDS = {
    "users": ("Volunteers", credit_selectors.leaderboard_users),
    "teams": ("Teams", credit_selectors.leaderboard_teams),
    "hosts": ("Computers", credit_selectors.leaderboard_hosts),
}


def _viewer_row_pk(rows: QuerySet, *, kind: str, volunteer: Volunteer | None) -> int | None:
    """The viewer's own row on this board: them, their team, or their best-placed host."""
    if volunteer is None:
        return None
    if kind == "users":
        return volunteer.pk
    if kind == "teams":
        return volunteer.team_id
    return rows.filter(volunteer=volunteer).values_list("pk", flat=True).first()


@require_safe
def leaderboard(request: HttpRequest, kind: str) -> HttpResponse:
    title, board = LEADERBOARDS[kind]
    order = request.GET.get("order", "total")
    if order not in credit_selectors.LEADERBOARD_ORDERS:
        order = "total"
    rows = board(order=order, now=timezone.now())
    page = page_of(request, rows, per_page=PER_PAGE)
    volunteer = account_selectors.volunteer_for_user(request.user)
    my_pk = _viewer_row_pk(rows, kind=kind, volunteer=volunteer)
    my_page_url = None
    if my_pk is not None:
        position = credit_selectors.leaderboard_position(rows, order=order, pk=my_pk)
        if position is not None:
            my_page_url = f"?order={order}&page={math.ceil(position / PER_PAGE)}#me"
    return render(request, "web/community/leaderboard.html", {
        "kind": kind, "title": title, "order": order, "rows": page,
        "first_rank": page.start_index(), "volunteer": volunteer,
        "my_pk": my_pk, "my_page_url": my_page_url,
    })


# --- the stats export -----------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _stats_user(row: dict) -> dict:
    return {"id": row["id"], "name": row["display_name"], "country": row["country"],
            "team_id": row["team_id"], "total_credit": row["total_credit"],
            "expavg_credit": row["rac"], "expavg_time": _iso(row["rac_time"]),
            "create_time": _iso(row["created_at"])}


def _stats_team(row: dict) -> dict:
    return {"id": row["id"], "name": row["name"], "founder_id": row["founder__volunteer__id"],
            "member_count": row["member_count"], "total_credit": row["total_credit"],
            "expavg_credit": row["rac"], "expavg_time": _iso(row["rac_time"]),
            "create_time": _iso(row["created_at"])}


def _stats_host(row: dict) -> dict:
    return {"id": row["id"], "user_id": row["volunteer_id"], "team_id": row["volunteer__team_id"],
            "os": row["os"], "arch": row["arch"], "cpu_count": row["cpu_count"],
            "speed": row["speed"], "client_version": row["client_version"],
            "total_credit": row["total_credit"], "expavg_credit": row["rac"],
            "expavg_time": _iso(row["rac_time"]), "create_time": _iso(row["created_at"]),
            "retired": row["retired"]}


STATS_EXPORTS = {
    "users": (credit_selectors.stats_users, _stats_user),
    "teams": (credit_selectors.stats_teams, _stats_team),
    "hosts": (credit_selectors.stats_hosts, _stats_host),
}


@cache_control(public=True, max_age=300)
@require_safe
def stats_export(request: HttpRequest, kind: str) -> JsonResponse:
    rows, shape = STATS_EXPORTS[kind]
    paginator = Paginator(rows(), STATS_PER_PAGE)
    try:
        page = paginator.page(request.GET.get("page", 1))
    except (EmptyPage, PageNotAnInteger):
        return JsonResponse({"detail": f"No such page; pages run from 1 to "
                                       f"{paginator.num_pages}."}, status=404)
    next_url = (request.build_absolute_uri(f"{request.path}?page={page.next_page_number()}")
                if page.has_next() else None)
    return JsonResponse({
        "kind": kind,
        "generated_at": timezone.now().isoformat(),
        "credit_half_life_days": CREDIT_HALF_LIFE_SECONDS / SECONDS_PER_DAY,
        "count": paginator.count,
        "page": page.number,
        "num_pages": paginator.num_pages,
        "next": next_url,
        "results": [shape(row) for row in page.object_list],
    })


# --- the worker download --------------------------------------------------------------------


@require_safe
def download(request: HttpRequest) -> HttpResponse:
    wheel = downloads.wheel_current()
    wheel_url = (request.build_absolute_uri(reverse("download_wheel", args=[wheel.filename]))
                 if wheel else None)
    return render(request, "web/community/download.html",
                  {"wheel": wheel, "wheel_url": wheel_url, "server_url": server_url(request)})


@require_safe
def download_wheel(request: HttpRequest, filename: str) -> FileResponse:
    path = downloads.wheel_path(filename)
    if path is None:
        raise Http404("No such file.")
    return FileResponse(path.open("rb"), as_attachment=True, filename=path.name,
                        content_type="application/octet-stream")
