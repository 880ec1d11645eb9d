"""Error codes of the wire contract and the one exception that carries them to a client.

The codes are the older backend's strings, which deployed clients match on, so they are kept
byte for byte (including the lower-case transport codes).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # Transport: the request could not be read as the endpoint expects.
    INVALID_CONTENT_TYPE = "invalid Content-Type"
    INVALID_METHOD = "invalid method"
    UNAUTHORIZED = "unauthorized"
    INTERNAL_ERROR = "InternalError"
    # (new) bodies and uploads are bounded; over the bound gets this code.
    PAYLOAD_TOO_LARGE = "PayloadTooLarge"
    # (new) a path that no endpoint serves.
    NOT_FOUND = "NotFound"
    # Domain.
    PHONE_ALREADY_USE = "PhoneAlreadyUse"
    NAME_ALREADY_USE = "NameAlreadyUse"
    NAME_AND_PHONE_ALREADY_USE = "NameAndPhoneAlreadyUse"
    USER_NOT_FOUND = "UserNotFound"
    INVALID_PASSWORD = "InvalidPassword"
    MEDIA_NOT_FOUND = "MediaNotFound"
    EVENT_NOT_FOUND = "EventNotFound"
    OWNER_ALREADY_HAS_EVENT = "OwnerAlreadyHasEvent"
    USER_ALREADY_EXIST = "UserAlreadyExist"
    USER_IS_NOT_OWNER = "UserIsNotOwner"
    # (fix) DELETE of media that an event or a user's image still refers to.
    MEDIA_IN_USE = "MediaInUse"
    # (new) a sign-up or login over its address's rate, or a login to a phone that had too
    # many wrong passwords lately (vpiska/signin_limits.py).
    TOO_MANY_REQUESTS = "TooManyRequests"
    # (new) events/chat/remove of a line the chat does not have (API.md, "The host in charge").
    CHAT_MESSAGE_NOT_FOUND = "ChatMessageNotFound"
    # (new) events/members/remove of the event's own host: he would lock himself out of the
    # room he still owns (vpiska/actors/event.py).
    OWNER_CANNOT_BE_REMOVED = "OwnerCannotBeRemoved"
    # Validation.
    NAME_IS_EMPTY = "NameIsEmpty"
    PHONE_IS_EMPTY = "PhoneIsEmpty"
    PASSWORD_IS_EMPTY = "PasswordIsEmpty"
    PHONE_REGEX_INVALID = "PhoneRegexInvalid"
    PASSWORD_LENGTH_INVALID = "PasswordLengthInvalid"
    CONFIRM_PASSWORD_INVALID = "ConfirmPasswordInvalid"
    ADDRESS_IS_EMPTY = "AddressIsEmpty"
    COORDINATES_IS_EMPTY = "CoordinatesIsEmpty"
    HORIZONTAL_RANGE_IS_EMPTY = "HorizontalRangeIsEmpty"
    VERTICAL_RANGE_IS_EMPTY = "VerticalRangeIsEmpty"
    ID_IS_EMPTY = "IdIsEmpty"
    INVALID_ID_FORMAT = "InvalidIdFormat"
    # (new) events/chat: `limit` not an integer 1-200, `before` not an integer >= 1;
    # events/chat/remove: `seq` not an integer >= 1.
    LIMIT_INVALID = "LimitInvalid"
    BEFORE_INVALID = "BeforeInvalid"
    SEQ_INVALID = "SeqInvalid"
    # (new) events/members/remove's `ban` given, but not as true or false.
    BAN_INVALID = "BanInvalid"


class DomainError(Exception):
    """The request was understood and refused; `codes` go to the client in this order.

    Raised anywhere below the HTTP layer, which turns it into the error envelope. It is never
    logged with a traceback: it is an answer, not a fault.
    """

    def __init__(self, *codes: ErrorCode) -> None:
        assert codes, "a DomainError names at least one code"
        super().__init__(", ".join(codes))
        self.codes = codes


class TooManyRequests(DomainError):
    """A sign-in attempt refused by its limits (`TooManyRequests`), and how many seconds
    until one may pass: the HTTP layer tells the client as `Retry-After`."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(ErrorCode.TOO_MANY_REQUESTS)
        self.retry_after = retry_after


class RoomMoved(DomainError):
    """The room ended on this node before it handled the command, because another node serves
    the event now (it was handed over, or claimed past this node's lease). The command did
    nothing, so asking again where the event runs is safe (`ask_where_it_runs` in
    vpiska/actors/rooms.py); a client that still sees this refusal sees InternalError, as
    before."""

    def __init__(self) -> None:
        super().__init__(ErrorCode.INTERNAL_ERROR)
