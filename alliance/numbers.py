"""Whole numbers as clients write them: in a query string, a path, a header or a form.

`str.isdigit()` admits characters `int()` refuses (the superscript "²" is a digit to Unicode)
and `int()` refuses more than 4300 digits; a number checked one way and read the other was a
500 wherever a client could write one. Read them here.
"""

from __future__ import annotations

#: The largest integer a request may carry where the database keeps or compares it
#: (`_count`, `_page_offset`, a version, QIDO-RS `limit`): what its integer columns and
#: LIMIT/OFFSET hold.
MAX_INTEGER = 2**31 - 1


def whole_number(text: str, maximum: int = MAX_INTEGER) -> int | None:
    """`text` as a whole number written in ASCII digits, at most `maximum`; None when it is
    not one (another script's digits, a sign, white space, or too large)."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(maximum)):
        return None
    number = int(text)
    return number if number <= maximum else None
