"""`POST /classify`'s query parameters (raw tensors: shape, TTA, profile, model, sheet) and its media type.

One definition, validated by pydantic with the constraints the OpenAPI document declares, for both ways a
request reaches the route: FastAPI's route (`service.http.classify`, which declares this model as its query
parameters, so the OpenAPI document is made from it) and the ASGI fast path
(`service.http.fastpath`), which parses the raw query string itself. Both refuse a bad value with 400 and the
same `query.<name>: <problem>` message.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import BadRequest


class Query(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")  # FastAPI ignores unknown parameters too

    n: int | None = Field(None, ge=0, description="raw tensor: number of crops")
    h: int | None = Field(None, ge=0, description="raw tensor: crop height")
    w: int | None = Field(None, ge=0, description="raw tensor: crop width")
    tta: bool | None = Field(None, description="raw tensor: TTA on/off")
    profile: str | None = Field(None, description="raw tensor: profile")
    model: str | None = Field(None, description="raw tensor: model name")
    version: str | None = Field(None, description="raw tensor: model version")
    sheet: str | None = Field(None, max_length=256, description="raw tensor: sheet name")
    sheet_context: bool | None = Field(None, description="raw tensor: sheet context on/off")


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
