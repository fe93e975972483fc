"""Hypothesis strategies for FHIR requests (issue 11 section 2): values of each search
parameter by its type (FHIR R4 search.html: date, token, reference, string; and the integers
of the result parameters), modifiers, and bodies of every registered resource type, built from
the type's fhir.resources model so that most reach the server's own checks and hooks.

Each strategy mixes what a client should send with what it should not: out-of-range years,
impossible dates and zones, `|` and `,` and `\\` in tokens, Chinese, Uyghur and Kazakh
text, NUL and other control characters, huge integers and very long values.
"""

from __future__ import annotations

import json
import string
import types
import typing
from typing import Any

from hypothesis import strategies as st

from alliance.fhir.registry import ResourceDefinition
from alliance.fhir.types import SearchParam

# ---- text ---------------------------------------------------------------------------------

#: Pieces that have broken parsers, SQL and JSON before: separators and escapes of FHIR search,
#: LIKE wildcards, quotes, control characters (NUL first), the middle dot of Uyghur and Kazakh
#: names, right-to-left and zero-width marks, characters outside the BMP.
NASTY = [
    "\x00",
    "\x01",
    "\x7f",
    "%",
    "_",
    "\\",
    "|",
    ",",
    "$",
    ":",
    "/",
    "'",
    '"',
    "\t",
    "\n",
    "\r",
    " ",
    "·",
    "阿依古丽·努尔兰",
    "新源县人民医院",
    "Айгүл",
    "ئايگۈل",
    "\u202e",
    "\u200b",
    "\ufeff",
    "𠀀",
    "é",
    "ß",
    "İ",
    "..",
    "%00",
    "%zz",
]

#: Any character UTF-8 can carry but surrogates: letters of every script (Chinese, Kazakh
#: Cyrillic, Uyghur Arabic), marks, digits of other scripts, punctuation, controls.
_SCRIPTS = st.characters(
    codec="utf-8",
    categories=["L", "M", "N", "P", "S", "Z", "Cc"],
)
CJK = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)


def text(max_size: int = 20) -> st.SearchStrategy[str]:
    """Text a client might send anywhere: plain, Chinese, hostile, or very long."""
    return st.one_of(
        st.text(string.ascii_letters + string.digits + "-.", min_size=1, max_size=max_size),
        st.text(CJK, min_size=1, max_size=max_size),
        st.text(_SCRIPTS, max_size=max_size),
        st.lists(st.sampled_from(NASTY), min_size=1, max_size=4).map("".join),
        st.builds(
            lambda c, n: c * n, st.sampled_from(["x", "新", "9"]), st.sampled_from([256, 5000])
        ),
    )


# ---- search values by parameter type ------------------------------------------------------

#: search.html#prefix, and some that are not prefixes.
DATE_PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "EQ", "xx", "g"]


@st.composite
def _date(draw: st.DrawFn) -> str:
    year = draw(
        st.one_of(
            st.integers(0, 9999).map(lambda y: f"{y:04d}"),
            st.sampled_from(["0001", "9999", "0000", "10000", "-001", "99999", "20x6", "202"]),
        )
    )
    parts = [year]
    for low, high in ((0, 13), (0, 32)):  # months and days, out of range at both ends
        if draw(st.booleans()):
            break
        parts.append(f"{draw(st.integers(low, high)):02d}")
    value = "-".join(parts)
    if len(parts) == 3 and draw(st.booleans()):
        hour, minute, second = (draw(st.integers(0, 61)) for _ in range(3))
        value += f"T{hour:02d}:{minute:02d}"
        if draw(st.booleans()):
            value += f":{second:02d}" + draw(st.sampled_from(["", ".5", ".123456789012"]))
        value += draw(st.sampled_from(["", "Z", "+08:00", "-12:00", "+14:00", "+99:99", "+8"]))
    return value


def date_value() -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(lambda p, d: p + d, st.sampled_from(DATE_PREFIXES), _date()),
        text(12),
    )


def token_value() -> st.SearchStrategy[str]:
    systems = st.one_of(
        st.sampled_from(
            [
                "",
                "urn:oid:1.2.156.112606.1.1.1",
                "http://terminology.hl7.org/CodeSystem/v2-0203",
                "https://fhir.yzxy-alliance.cn/CodeSystem/referral-category",
            ]
        ),
        text(),
    )
    return st.one_of(
        text(),
        st.builds(lambda s, c: f"{s}|{c}", systems, text()),
        st.builds(lambda s: f"{s}|", systems),
        st.sampled_from(["|", "||", "true", "false", "up-referral", "male", "\\|", "a\\,b"]),
    )


def reference_value(param: SearchParam) -> st.SearchStrategy[str]:
    types = st.sampled_from([*param.targets, "Patient", "Organization", "Foo", "patient", ""])
    ids = st.one_of(st.sampled_from(["xy-people", "subei", "demo-aygul", "1"]), text())
    return st.one_of(
        ids,
        st.builds(lambda t, i: f"{t}/{i}", types, ids),
        st.builds(lambda t, i: f"http://testserver/fhir/{t}/{i}", types, ids),
        st.builds(lambda t, i: f"https://elsewhere.example/fhir/{t}/{i}", types, ids),
        st.builds(lambda t, i: f"{t}/{i}/_history/1", types, ids),
        st.sampled_from(["/", "//", "Patient/", "/Patient/x", "a/b/c/d"]),
    )


def search_value(param: SearchParam) -> st.SearchStrategy[str]:
    """A value for `param` by its type, or several as alternatives (a comma: OR)."""
    one = {
        "date": date_value,
        "token": token_value,
        "reference": lambda: reference_value(param),
        "string": text,
    }[param.type]()
    return st.one_of(one, st.lists(one, min_size=2, max_size=3).map(",".join))


#: Modifiers (search.html#modifiers) some parameter type takes, and some no type takes.
MODIFIERS = [
    "exact",
    "contains",
    "not",
    "missing",
    "text",
    "above",
    "below",
    "in",
    "not-in",
    "of-type",
    "identifier",
    "iterate",
    "Patient",
    "Organization",
    "",
]


def modifier(param: SearchParam) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""),
        st.sampled_from([*MODIFIERS, *param.targets]).map(lambda m: f":{m}"),
        text(8).map(lambda m: f":{m}"),
    )


def integer_value() -> st.SearchStrategy[str]:
    """Values of `_count`, `_page_offset`, `_page_before` and the like."""
    return st.one_of(
        st.integers(-5, 300).map(str),
        st.sampled_from(["2147483647", "2147483648", "9" * 30, "-0", "1e3", "0x10", "", " 1"]),
        st.integers(min_value=0).map(str),
        text(6),
    )


def result_param(definition: ResourceDefinition) -> st.SearchStrategy[tuple[str, str]]:
    """One result parameter (search.html#return) with a value, right or wrong."""
    names = [p.name for p in definition.search_params]
    sortable = st.sampled_from([*names, "_id", "_lastUpdated", "x"])
    return st.one_of(
        st.tuples(st.sampled_from(["_count", "_page_offset"]), integer_value()),
        st.tuples(
            st.just("_sort"),
            st.lists(
                st.builds(lambda d, n: d + n, st.sampled_from(["", "-"]), sortable), max_size=3
            ).map(",".join),
        ),
        st.tuples(
            st.just("_include"),
            st.one_of(
                st.sampled_from([*definition.includes, f"{definition.type}:*", "*", ""]),
                text(),
            ),
        ),
        st.tuples(st.just("_total"), st.sampled_from(["none", "estimate", "accurate", "all"])),
        st.tuples(st.just("_summary"), st.sampled_from(["count", "false", "true", "text"])),
        st.tuples(st.just("_page_after"), text()),
        st.tuples(st.just("_format"), st.sampled_from(["json", "xml", "application/fhir+json"])),
        st.tuples(text(8), text()),  # a parameter that does not exist
    )


def search_params(
    definition: ResourceDefinition, params: list[SearchParam]
) -> st.SearchStrategy[list[tuple[str, str]]]:
    """A query string for a search of `definition`'s type: one to three of its parameters
    (each with a modifier and a value by its type), maybe with result parameters."""
    filters = st.sampled_from(params).flatmap(
        lambda p: st.tuples(modifier(p).map(lambda m: p.name + m), search_value(p))
    )
    return st.builds(
        lambda f, r: [*f, *r],
        st.lists(filters, min_size=1, max_size=3),
        st.lists(result_param(definition), max_size=2),
    )


# ---- bodies of a resource type ------------------------------------------------------------

_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([10**30, -(2**63), 2**64, 1e308]),
    text(),
)
#: Any JSON at all, a little nested.
ANY_JSON = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(text(8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _reference() -> st.SearchStrategy[dict[str, Any]]:
    refs = st.one_of(
        st.sampled_from(
            [
                "Organization/xy-people",
                "Organization/subei",
                "Patient/demo-aygul",
                "Practitioner/sp-subei",
                "PractitionerRole/sp-subei-cardio",
                "ServiceRequest/none",
                "Patient/",
                "#contained",
                "http://testserver/fhir/Organization/xy-people",
                "/api/attachments/none",
            ]
        ),
        text(),
    )
    return st.fixed_dictionaries({"reference": refs}, optional={"display": text()})


def _coding() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"code": st.one_of(text(), st.sampled_from(["routine", "up-referral", "male", "I10"]))},
        optional={
            "system": st.one_of(
                st.sampled_from(
                    [
                        "https://fhir.yzxy-alliance.cn/CodeSystem/icd-10-cn",
                        "http://hl7.org/fhir/sid/icd-10",
                    ]
                ),
                text(300),
            ),
            "version": st.sampled_from(["2.0", "1", ""]),
            "display": text(),
        },
    )


_DATATYPES: dict[str, st.SearchStrategy[Any]] = {
    "ReferenceType": _reference(),
    "CodingType": _coding(),
    "CodeableConceptType": st.fixed_dictionaries(
        {}, optional={"coding": st.lists(_coding(), max_size=2), "text": text()}
    ),
    "IdentifierType": st.fixed_dictionaries(
        {},
        optional={
            "system": st.one_of(st.just("urn:oid:1.2.156.112606.1.1.1"), text(300)),
            "value": st.one_of(st.just("654125199001010015"), text()),
        },
    ),
    "PeriodType": st.fixed_dictionaries({}, optional={"start": _date(), "end": _date()}),
    "HumanNameType": st.fixed_dictionaries(
        {},
        optional={
            "text": text(),
            "family": text(),
            "given": st.lists(text(), max_size=2),
        },
    ),
    "ContactPointType": st.fixed_dictionaries(
        {}, optional={"system": st.sampled_from(["phone", "email", "x"]), "value": text()}
    ),
    "MetaType": st.one_of(
        st.fixed_dictionaries({}, optional={"versionId": text(), "lastUpdated": _date()}),
        ANY_JSON,
    ),
}


def _value(annotation: Any, depth: int) -> st.SearchStrategy[Any]:
    """A value for an element of a fhir.resources model by its annotation: lists, the
    common datatypes, dates, codes and strings; anything else, or at random, any JSON."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and args:
        return _value(args[0], depth)
    if origin is list and args:
        return st.lists(_value(args[0], depth), max_size=2)
    if origin is typing.Annotated and args:
        base = args[0]
        marker = type(args[1]).__name__ if len(args) > 1 else ""
        if marker in ("Date", "DateTime", "Instant"):
            return _date()
        if marker == "Integer" or base is int:
            return st.one_of(st.integers(-(2**40), 2**40), st.just(10**30))
        if marker == "Decimal":
            return st.floats(allow_nan=True, allow_infinity=True)
        return text()
    name = getattr(annotation, "__name__", str(annotation))
    if name in _DATATYPES:
        return _DATATYPES[name]
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers()
    if annotation is str:
        return text()
    return ANY_JSON if depth > 0 else st.dictionaries(text(8), ANY_JSON, max_size=2)


def body(
    definition: ResourceDefinition, seed: dict[str, Any] | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    """A body for `definition`'s type: a valid one (`seed`, when the demo alliance has one)
    with one to three elements changed or removed, or one made from the type's elements,
    with now and then the wrong resourceType, an id, or a meta that is not an object."""
    fields = {
        field.alias or name: field.annotation
        for name, field in definition.model.model_fields.items()
        if (field.json_schema_extra or {}).get("element_property")  # type: ignore[union-attr]
        and name not in ("id", "resourceType")
    }
    element = st.sampled_from(sorted(fields)).flatmap(
        lambda k: st.tuples(st.just(k), st.one_of(_value(fields[k], 0), ANY_JSON, st.just(_GONE)))
    )
    changes = st.lists(element, min_size=1, max_size=3)
    kind = st.sampled_from([definition.type, definition.type, "Patient", "Basic", "", 7])

    def build(base: dict[str, Any], edits: list[tuple[str, Any]], rtype: Any) -> dict[str, Any]:
        out = {**base, "resourceType": rtype}
        for key, value in edits:
            if value is _GONE:
                out.pop(key, None)
            else:
                out[key] = value
        return out

    bases = [st.just({})] + ([st.just(seed)] if seed else [])
    return st.builds(build, st.one_of(*bases), changes, kind)


#: An edit that removes the element.
_GONE = object()


def encode(resource: Any) -> bytes:
    """JSON as a client may send it: NaN and Infinity too (json.loads reads them back)."""
    return json.dumps(resource, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")
