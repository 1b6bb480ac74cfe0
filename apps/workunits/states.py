"""The state machines of work units and their replicas, with BOINC's names and codes.

A replica (``Result``) keeps BOINC's separate fields, because each answers another question:
``server_state`` — where is it; ``outcome`` — how did it end; ``validate_state`` — was its
answer trusted. A work unit has no state of its own: it is the combination of its flags
(``need_validate``, ``error_mask``, ``assimilate_state``, ``file_delete_state``) and its
replicas'. Each allowed move is listed here; services perform it as a conditional update.
"""

import enum

from django.db import models


class ServerState(models.IntegerChoices):
    UNSENT = 2, "unsent"
    IN_PROGRESS = 4, "in progress"
    OVER = 5, "over"


class Outcome(models.IntegerChoices):
    INIT = 0, "-"
    SUCCESS = 1, "success"
    CLIENT_ERROR = 3, "client error"
    NO_REPLY = 4, "no reply"
    DIDNT_NEED = 5, "didn't need"
    VALIDATE_ERROR = 6, "validate error"
    CLIENT_DETACHED = 7, "client detached"  # the host left the project; not its fault


class ValidateState(models.IntegerChoices):
    INIT = 0, "pending"
    VALID = 1, "valid"
    INVALID = 2, "invalid"
    NO_CHECK = 3, "not checked"
    INCONCLUSIVE = 4, "inconclusive"
    TOO_LATE = 5, "too late"


class AssimilateState(models.IntegerChoices):
    INIT = 0, "-"
    READY = 1, "ready"
    DONE = 2, "done"


class FileDeleteState(models.IntegerChoices):
    INIT = 0, "-"
    READY = 1, "ready"
    DONE = 2, "done"


class ErrorMask(enum.IntFlag):
    """Bits of ``WorkUnit.error_mask`` (BOINC's values)."""

    COULDNT_SEND = 1
    TOO_MANY_ERROR_RESULTS = 2
    TOO_MANY_SUCCESS_RESULTS = 4
    TOO_MANY_TOTAL_RESULTS = 8
    CANCELLED = 16
    NO_CANONICAL_RESULT = 32


class CampaignState(models.TextChoices):
    DRAFT = "draft", "draft"
    ACTIVE = "active", "active"
    PAUSED = "paused", "paused"
    FINISHED = "finished", "finished"


# Allowed moves. Each service that changes a state names the move it makes and performs it
# as ``filter(pk=..., <field>=<from>).update(<field>=<to>)``, which must change one row.
SERVER_STATE_MOVES = {
    ServerState.UNSENT: {ServerState.IN_PROGRESS, ServerState.OVER},  # sent / not needed
    ServerState.IN_PROGRESS: {ServerState.OVER},  # reported, or timed out
    ServerState.OVER: set(),
}
VALIDATE_STATE_MOVES = {
    ValidateState.INIT: {ValidateState.VALID, ValidateState.INVALID, ValidateState.INCONCLUSIVE,
                         ValidateState.NO_CHECK, ValidateState.TOO_LATE},
    ValidateState.INCONCLUSIVE: {ValidateState.VALID, ValidateState.INVALID,
                                 ValidateState.NO_CHECK},
    ValidateState.VALID: set(),
    ValidateState.INVALID: set(),
    ValidateState.NO_CHECK: set(),
    ValidateState.TOO_LATE: set(),
}
CAMPAIGN_MOVES = {
    CampaignState.DRAFT: {CampaignState.ACTIVE},
    CampaignState.ACTIVE: {CampaignState.PAUSED, CampaignState.FINISHED},
    CampaignState.PAUSED: {CampaignState.ACTIVE, CampaignState.FINISHED},
    CampaignState.FINISHED: set(),
}
