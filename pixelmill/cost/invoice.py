"""A hosted API's invoice (CSV: ``date, images, amount``) placed on the same curves.

For teams still paying per image: their real monthly volume and effective price per
image become a point on the hosted curve and a crossover of their own.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date

REQUIRED_COLUMNS = ("date", "images", "amount")


class InvoiceError(ValueError):
    """An invoice file that cannot be read; the message names the line."""


@dataclass(frozen=True)
class Invoice:
    """Totals of an invoice and the monthly figures derived from them."""

    rows: int
    months: int
    images: int
    amount: float

    @property
    def price_per_image(self) -> float:
        """Effective price: total amount / total images."""
        return self.amount / self.images

    @property
    def monthly_volume(self) -> float:
        """Average images per calendar month that appears in the invoice."""
        return self.images / self.months

    @property
    def monthly_amount(self) -> float:
        """Average amount per calendar month that appears in the invoice."""
        return self.amount / self.months


def _number(text: str, line: int, column: str) -> float:
    try:
        # Invoices often carry currency signs and thousands separators.
        return float(text.replace("$", "").replace(",", "").strip())
    except ValueError:
        raise InvoiceError(f"line {line}: {column} {text!r} is not a number") from None


def parse_invoice(text: str) -> Invoice:
    """Read CSV text with a header naming ``date``, ``images`` and ``amount`` (any order, more allowed)."""
    reader = csv.DictReader(io.StringIO(text))
    fields = {name.strip().lower(): name for name in reader.fieldnames or []}
    missing = [c for c in REQUIRED_COLUMNS if c not in fields]
    if missing:
        raise InvoiceError(f"the header lacks {', '.join(missing)} (need {', '.join(REQUIRED_COLUMNS)})")
    months: set[tuple[int, int]] = set()
    rows, images, amount = 0, 0, 0.0
    for line, row in enumerate(reader, start=2):
        try:
            day = date.fromisoformat(row[fields["date"]].strip()[:10])
        except ValueError:
            raise InvoiceError(f"line {line}: date {row[fields['date']]!r} is not YYYY-MM-DD") from None
        months.add((day.year, day.month))
        images += int(_number(row[fields["images"]], line, "images"))
        amount += _number(row[fields["amount"]], line, "amount")
        rows += 1
    if images <= 0:
        raise InvoiceError("the invoice has no images")
    return Invoice(rows=rows, months=len(months), images=images, amount=amount)
