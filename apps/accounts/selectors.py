"""Reads of volunteers, hosts and teams; volunteers and hosts are also looked up by secret.

A secret is looked up by its sha256, never compared as plain text: the database holds only the
hash, and the final comparison uses ``hmac.compare_digest`` so that no timing depends on how
much of a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac

from django.db.models import Count, Q, QuerySet

from .models import Host, Team, Volunteer

# Secrets are ``secrets.token_urlsafe(32)``: 43 characters. Anything far longer is not ours and
# is not worth hashing.
MAX_SECRET_LENGTH = 200


def secret_hash(secret: str) -> str:
    """The sha256 (hex) under which an account key or host token is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _usable(secret: object) -> bool:
    return isinstance(secret, str) and 0 < len(secret) <= MAX_SECRET_LENGTH


def volunteer_by_account_key(account_key: str) -> Volunteer | None:
    """The volunteer whose account key this is, or None (also for an inactive user)."""
    if not _usable(account_key):
        return None
    digest = secret_hash(account_key)
    volunteer = (Volunteer.objects.select_related("user")
                 .filter(account_key_hash=digest).first())
    if volunteer is None or not hmac.compare_digest(volunteer.account_key_hash, digest):
        return None
    if not volunteer.user.is_active:
        return None
    return volunteer


def host_by_token(token: str) -> Host | None:
    """The host this token was issued to, with its volunteer and user, or None.

    Retired hosts are returned too: the caller decides how to refuse them.
    """
    if not _usable(token):
        return None
    digest = secret_hash(token)
    host = Host.objects.select_related("volunteer__user").filter(token_hash=digest).first()
    if host is None or not hmac.compare_digest(host.token_hash, digest):
        return None
    return host


# --- the web site's reads: a volunteer's own rows, teams ------------------------------------


# A deactivated user's profile stays in the database (its credit is in the ledger) but is not
# shown on public pages.
_ACTIVE_MEMBER_COUNT = Count("members", filter=Q(members__user__is_active=True))


def volunteer_for_user(user: object) -> Volunteer | None:
    """The signed-in user's volunteer profile with its team, or None (e.g. a staff account)."""
    if not getattr(user, "is_authenticated", False):
        return None
    return Volunteer.objects.select_related("team").filter(user=user).first()


def host_owned_by(*, volunteer: Volunteer, host_id: int) -> Host | None:
    """One of this volunteer's hosts; None for anyone else's, so callers answer 404 alike."""
    return Host.objects.filter(pk=host_id, volunteer=volunteer).first()


def team_list(*, search: str = "") -> QuerySet[Team]:
    """Teams, biggest credit first, with their member counts; ``search`` matches the name."""
    teams = Team.objects.annotate(member_count=_ACTIVE_MEMBER_COUNT)
    if search:
        teams = teams.filter(name__icontains=search)
    return teams.order_by("-total_credit", "name", "id")


def team_get(*, team_id: int) -> Team | None:
    """A team with its member count and its founder's profile (one query)."""
    return (Team.objects.select_related("founder__volunteer")
            .annotate(member_count=_ACTIVE_MEMBER_COUNT).filter(pk=team_id).first())

