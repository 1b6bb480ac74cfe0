"""Writes for volunteers, hosts and teams: registration, account keys, attaching and retiring
hosts, founding, joining and leaving teams.

An account key (one per volunteer, attaches hosts) and a host token (one per host, used for
every worker call) are shown to their owner once, when made, and stored only as their sha256.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.common.errors import ApplicationError

from .models import Host, Team, Volunteer
from .selectors import secret_hash, volunteer_by_account_key

# The fields of worker_client.protocol.HostInfo that a host row keeps, with their limits.
HOST_INFO_FIELDS = ("name", "os", "arch", "python_version", "numba_version", "cpu_count",
                    "memory_mb", "client_version", "speed")
KEY_HINT_LENGTH = 6
TEAM_NAME_MAX_LENGTH = Team._meta.get_field("name").max_length


# What a name shown to others may not hold: control characters (NUL, ESC and its terminal
# sequences, newlines), lone UTF-16 surrogates, line and paragraph separators, and the invisible
# formatting characters that reorder or hide the text around them (bidi embeddings, overrides
# and isolates: "evil\u202etxt.exe" shows as "evilexe.txt"; zero-width space, word joiner,
# byte order mark). Letters of every script, emoji and their joiners (U+200C, U+200D) are fine.
_NOT_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b\u2028\u2029\u202a-\u202e"
                           "\u2060\u2066-\u2069\ufeff]")
_NOT_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\u200b"
                          "\u202a-\u202e\u2060\u2066-\u2069\ufeff]")  # newlines and tabs allowed


def public_text(value: str, *, what: str, code: str, multiline: bool = False) -> str:
    """``value`` in Unicode NFC (one spelling for what looks the same), or an
    ``ApplicationError`` naming the first character a public name or text may not hold."""
    found = (_NOT_IN_TEXT if multiline else _NOT_IN_NAMES).search(value)
    if found:
        codepoint = f"U+{ord(found.group()):04X}"
        named = f"{codepoint} {unicodedata.name(found.group(), '')}".strip()
        raise ApplicationError(f"The {what} contains {named}: control and invisible formatting "
                               f"characters are not allowed.",
                               extra={"code": code, "character": codepoint})
    return unicodedata.normalize("NFC", value)


def new_secret() -> str:
    """256 random bits, URL-safe; never starting with "-", which a command line would take for
    an option (``--account-key -abc…`` fails in argparse)."""
    while True:
        secret = secrets.token_urlsafe(32)
        if not secret.startswith("-"):
            return secret


def _host_fields(info: dict[str, Any]) -> dict[str, Any]:
    unknown = set(info) - set(HOST_INFO_FIELDS)
    if unknown:
        raise ApplicationError(f"Unknown host field(s): {', '.join(sorted(unknown))}.",
                               extra={"code": "invalid_host_info", "fields": sorted(unknown)})
    fields = {name: info[name] for name in HOST_INFO_FIELDS if name in info}
    for name, value in fields.items():
        if isinstance(value, str):
            fields[name] = public_text(value, what=f"host's {name.replace('_', ' ')}",
                                       code="invalid_host_info")
    return fields


@transaction.atomic
def volunteer_register(*, username: str, email: str, password: str, display_name: str,
                       country: str = "") -> tuple[Volunteer, str]:
    """Create a user and their volunteer profile; return it with the account key, shown once."""
    user_model = get_user_model()
    username = username.strip()
    if not username:
        raise ApplicationError("Choose a user name.", extra={"code": "invalid_username"})
    if user_model.objects.filter(username__iexact=username).exists():
        raise ApplicationError(f"The user name {username!r} is taken.",
                               extra={"code": "username_taken", "status": 409})
    try:
        user_model._meta.get_field("username").run_validators(username)
        validate_email(email)
    except ValidationError as exc:
        raise ApplicationError(" ".join(exc.messages), extra={"code": "invalid_account"}) from None
    country = country.strip().upper()
    if country and not (len(country) == 2 and country.isalpha() and country.isascii()):
        raise ApplicationError("Country must be a two-letter ISO 3166 code, e.g. DE.",
                               extra={"code": "invalid_country"})
    user = user_model(username=username, email=email)
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        raise ApplicationError(" ".join(exc.messages),
                               extra={"code": "invalid_password"}) from None
    display_name = public_text(display_name.strip() or username, what="display name",
                               code="invalid_display_name")
    user.set_password(password)
    user.save()
    account_key = new_secret()
    volunteer = Volunteer.objects.create(
        user=user, display_name=display_name[:100], country=country,
        account_key_hash=secret_hash(account_key), account_key_hint=account_key[:KEY_HINT_LENGTH])
    return volunteer, account_key


@transaction.atomic
def account_key_rotate(*, volunteer: Volunteer) -> str:
    """Replace the volunteer's account key; the old one stops attaching hosts at once.

    Hosts already attached keep working: each has its own token.
    """
    account_key = new_secret()
    changed = Volunteer.objects.filter(
        pk=volunteer.pk, account_key_hash=volunteer.account_key_hash,
    ).update(account_key_hash=secret_hash(account_key),
             account_key_hint=account_key[:KEY_HINT_LENGTH], updated_at=timezone.now())
    if changed != 1:
        raise ApplicationError("The account key was changed meanwhile; reload and try again.",
                               extra={"code": "conflict", "status": 409})
    volunteer.account_key_hash = secret_hash(account_key)
    volunteer.account_key_hint = account_key[:KEY_HINT_LENGTH]
    return account_key


@transaction.atomic
def host_attach(*, account_key: str, info: dict[str, Any]) -> tuple[Host, str]:
    """Attach a new host to the account this key belongs to; return it with its token, once."""
    volunteer = volunteer_by_account_key(account_key)
    if volunteer is None:
        raise ApplicationError(
            "That account key is not valid. Copy it again from your account page on the portal.",
            extra={"code": "invalid_account_key", "status": 403})
    fields = _host_fields(info)
    if not fields.get("name"):
        raise ApplicationError("A host needs a name.", extra={"code": "invalid_host_info"})
    token = new_secret()
    host = Host.objects.create(volunteer=volunteer, token_hash=secret_hash(token),
                               last_contact=timezone.now(), **fields)
    return host, token


@transaction.atomic
def host_update(*, host: Host, info: dict[str, Any]) -> Host:
    """Record what a host says about itself (platform, versions, measured speed)."""
    fields = _host_fields(info)
    for name, value in fields.items():
        setattr(host, name, value)
    host.last_contact = timezone.now()
    host.save(update_fields=[*fields, "last_contact"])
    return host


@transaction.atomic
def host_retire(*, host: Host) -> Host:
    """Revoke a host's token for good: it can no longer ask for work or report.

    Its tasks in progress are left to time out; the transitioner then replaces them.
    """
    changed = Host.objects.filter(pk=host.pk, retired=False).update(
        retired=True, updated_at=timezone.now())
    if changed != 1:
        raise ApplicationError("This host is already retired.",
                               extra={"code": "host_retired", "status": 409})
    host.retired = True
    return host


# --- teams ----------------------------------------------------------------------------------
# A volunteer is in at most one team (``Volunteer.team``). Credit already granted stays with
# the team it was earned for (the ledger row names it), so joining and leaving move no credit.


def _volunteer_team_move(*, volunteer: Volunteer, from_team_id: int | None,
                         to_team: Team | None) -> None:
    # Conditional on the team we read: two tabs joining two teams cannot both win.
    changed = Volunteer.objects.filter(pk=volunteer.pk, team_id=from_team_id).update(
        team=to_team, updated_at=timezone.now())
    if changed != 1:
        raise ApplicationError("Your team was changed meanwhile; reload and try again.",
                               extra={"code": "conflict", "status": 409})
    volunteer.team = to_team


@transaction.atomic
def team_create(*, founder: Volunteer, name: str, description: str = "") -> Team:
    """Found a team; the founder joins it at once (leaving their current team, if any)."""
    name = public_text(name, what="team name", code="invalid_team_name")
    name = " ".join(name.split())  # no leading, trailing or doubled spaces in a public name
    description = public_text(description.strip(), what="description",
                              code="invalid_team_description", multiline=True)
    if not name:
        raise ApplicationError("Choose a team name.", extra={"code": "invalid_team_name"})
    if len(name) > TEAM_NAME_MAX_LENGTH:
        raise ApplicationError(f"A team name has at most {TEAM_NAME_MAX_LENGTH} characters.",
                               extra={"code": "invalid_team_name"})
    # The unique constraint is case-sensitive; "Alpha" and "alpha" would confuse everyone.
    if Team.objects.filter(name__iexact=name).exists():
        raise ApplicationError(f"There is already a team called {name!r}.",
                               extra={"code": "team_name_taken", "status": 409})
    try:
        with transaction.atomic():
            team = Team.objects.create(name=name, description=description,
                                       founder=founder.user)
    except IntegrityError:  # created by someone else between the check and the insert
        raise ApplicationError(f"There is already a team called {name!r}.",
                               extra={"code": "team_name_taken", "status": 409}) from None
    _volunteer_team_move(volunteer=founder, from_team_id=founder.team_id, to_team=team)
    return team


@transaction.atomic
def team_join(*, volunteer: Volunteer, team: Team) -> Volunteer:
    """Join a team, leaving the current one; credit from now on also counts for the team."""
    if volunteer.team_id == team.pk:
        raise ApplicationError(f"You are already in {team.name}.",
                               extra={"code": "already_member", "status": 409})
    _volunteer_team_move(volunteer=volunteer, from_team_id=volunteer.team_id, to_team=team)
    return volunteer


@transaction.atomic
def team_leave(*, volunteer: Volunteer) -> Volunteer:
    """Leave the current team. The team keeps the credit earned for it, and its founder."""
    if volunteer.team_id is None:
        raise ApplicationError("You are not in a team.", extra={"code": "not_a_member"})
    _volunteer_team_move(volunteer=volunteer, from_team_id=volunteer.team_id, to_team=None)
    return volunteer
