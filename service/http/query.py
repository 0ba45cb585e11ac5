"""`POST /classify`'s query parameters (raw tensors: shape, TTA, profile, model, sheet) and its media type.

One definition, validated by pydantic with the constraints the OpenAPI document declares, for both ways a
request reaches the route: FastAPI's parameter declarations (`service.http.classify`) and the ASGI fast path
(`service.http.fastpath`), which parses the raw query string itself. Both refuse a bad value with 400 and the
same `query.<name>: <problem>` message.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import BadRequest


class Query(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")  # FastAPI ignores unknown parameters too

    n: int | None = Field(None, ge=0)
    h: int | None = Field(None, ge=0)
    w: int | None = Field(None, ge=0)
    tta: bool | None = None
    profile: str | None = None
    model: str | None = None
    version: str | None = None
    sheet: str | None = Field(None, max_length=256)
    sheet_context: bool | None = None


EMPTY = Query()
_FIELDS = frozenset(Query.model_fields)


def parse_query(query_string: bytes) -> Query:
    """The raw ASGI query string -> `Query` (400 naming each bad parameter). Repeated: the last one counts."""
    if not query_string:
        return EMPTY
    try:
        pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
        return Query.model_validate({k: v for k, v in pairs if k in _FIELDS})
    except ValidationError as exc:
        problems = [f"query.{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        raise BadRequest("; ".join(problems)) from None


def media_type(content_type: str) -> str:
    """`Content-Type` without its parameters, lower case (`application/json; charset=utf-8` -> `application/json`)."""
    return content_type.split(";")[0].strip().lower()
