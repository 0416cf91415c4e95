"""Reason codes for messages the gateway drops. Segment's codes where Segment has one."""

from __future__ import annotations

EMPTY_BATCH = "empty_batch"
NO_USER_ANON_ID = "no_user_anon_id"
EVENT_NOT_DEFINED = "event_not_defined"
EVENT_NOT_STRING = "event_not_string"
PROPERTIES_NOT_OBJECT = "properties_not_object"
TRAITS_NOT_OBJECT = "traits_not_object"
NAME_NOT_STRING = "name_not_string"
CATEGORY_NOT_STRING = "category_not_string"
ID_REQUIRED = "id_required"
ID_NOT_STRING = "id_not_string"
MULTI_USER_ERROR = "multi_user_error"
UNKNOWN_SOURCE = "unknown_source"
BAD_REQUEST = "bad_request"
MESSAGE_TOO_LARGE = "message_too_large"

DESCRIPTIONS: dict[str, str] = {
    EMPTY_BATCH: "the batch holds no messages",
    NO_USER_ANON_ID: "neither userId nor anonymousId is set",
    EVENT_NOT_DEFINED: "a track call without an event name",
    EVENT_NOT_STRING: "event is not a string",
    PROPERTIES_NOT_OBJECT: "properties is not an object",
    TRAITS_NOT_OBJECT: "traits is not an object",
    NAME_NOT_STRING: "name is not a string",
    CATEGORY_NOT_STRING: "category is not a string",
    ID_REQUIRED: "groupId (group) or previousId (alias) is missing",
    ID_NOT_STRING: "an id is neither a string nor a number",
    MULTI_USER_ERROR: "one request mixes messages of several write keys",
    UNKNOWN_SOURCE: "the write key is missing, unknown or disabled",
    BAD_REQUEST: "the message is not a valid Segment message (see the message text)",
    MESSAGE_TOO_LARGE: "the message is over 32 KB",
}
