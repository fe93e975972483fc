"""The resident identity number (居民身份证号码), GB 11643-1999.

18 characters: a 6-digit address code (GB/T 2260), the birth date YYYYMMDD, a 3-digit sequence
(odd for men, even for women) and a check character computed by ISO 7064 MOD 11-2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from alliance import clock

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"

#: Province-level prefixes of GB/T 2260 (and 71/81/82 for Taiwan, Hong Kong, Macao).
PROVINCE_CODES = frozenset(
    {
        *("11", "12", "13", "14", "15", "21", "22", "23"),
        *("31", "32", "33", "34", "35", "36", "37"),
        *("41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54"),
        *("61", "62", "63", "64", "65", "71", "81", "82"),
    }
)


class IdentityNumberError(ValueError):
    """The number breaks a rule of GB 11643; `rule` names which (a rule code, as
    `alliance.errors.AllianceError.rule`)."""

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class IdentityNumber:
    value: str
    address_code: str
    birth_date: date
    sequence: int
    #: Warnings that do not make the number invalid (an address code we do not recognise).
    warnings: tuple[str, ...]

    @property
    def sex(self) -> str:
        """FHIR administrative gender implied by the sequence: odd male, even female."""
        return "male" if self.sequence % 2 else "female"


def check_character(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits."""
    return _CHECK[sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def parse_identity_number(raw: str, *, today: date | None = None) -> IdentityNumber:
    """Validate and decompose; raises `IdentityNumberError` naming the first rule broken."""
    value = raw.strip().upper()
    if len(value) != 18:
        raise IdentityNumberError(
            f"an identity number has 18 characters, this one has {len(value)}",
            rule="identity-length",
        )
    if not re.fullmatch(r"[0-9]{17}[0-9X]", value):  # ASCII: "²" is a digit to isdigit()
        raise IdentityNumberError(
            "the first 17 characters must be digits and the last a digit or X",
            rule="identity-characters",
        )
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        raise IdentityNumberError(
            f"{value[6:14]} is not a valid birth date (YYYYMMDD)", rule="identity-date"
        ) from None
    if born > (today or clock.today()) or born.year < 1900:
        raise IdentityNumberError(f"birth date {born} is not plausible", rule="identity-date")
    expected = check_character(value[:17])
    if value[17] != expected:
        raise IdentityNumberError(
            f"the check character is {value[17]}, ISO 7064 MOD 11-2 gives {expected}",
            rule="identity-checksum",
        )
    warnings: tuple[str, ...] = ()
    if value[:2] not in PROVINCE_CODES:
        warnings = (f"address code {value[:6]} is not in a known province",)
    return IdentityNumber(value, value[:6], born, int(value[14:17]), warnings)
