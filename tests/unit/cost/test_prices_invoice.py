"""Price tables (shipped and user files) and invoice CSVs."""

from __future__ import annotations

from datetime import date

import pytest

from pixelmill.cost.invoice import InvoiceError, parse_invoice
from pixelmill.cost.prices import CostConfigError, build_config, default_offers, parse_cost_file


def test_default_offers_are_dated_and_sourced():
    offers = default_offers()
    assert len(offers) >= 4
    for offer in offers:
        assert isinstance(offer.checked, date) and offer.source.startswith("https://")
        assert offer.price() > 0


def test_user_file_replaces_offers_and_overrides_self_hosted(tmp_path):
    path = tmp_path / "cost.toml"
    path.write_text(
        '[self_hosted]\ngpu_hour = 2.5\ngpu_month = 900\n\n'
        '[[offer]]\nprovider = "acme"\nmodel = "xl"\nprice_per_megapixel = 0.02\nchecked = 2026-10-01\n'
    )
    config = build_config(gpu_hour=1.2, overhead_month=2000, path=path)
    assert config.gpu_hour == 2.5 and config.gpu_month == 900 and config.overhead_month == 2000
    assert [o.name for o in config.offers] == ["acme/xl"] and config.prices_source == str(path)
    assert config.offers[0].price(1000, 1000) == pytest.approx(0.02)
    assert config.offers[0].unit == "$0.02/MP"


@pytest.mark.parametrize("text, error", [
    ('[[offer]]\nprovider = "a"\nmodel = "b"\nchecked = "2026-01-01"\n', "exactly one"),
    ('[[offer]]\nprovider = "a"\nmodel = "b"\nprice_per_image = 0.1\n', "lacks 'checked'"),
    ('[self_hosted]\ngpu_hours = 1\n', "unknown"),
    ('[[offer]\n', "x.toml"),
])
def test_bad_cost_files(text, error):
    with pytest.raises(CostConfigError, match=error):
        parse_cost_file(text, "x.toml")


def test_compare_to_unknown_offer():
    with pytest.raises(CostConfigError, match="not a configured offer"):
        build_config(gpu_hour=1, overhead_month=0, compare_to="nope/x").reference_offer()


def test_missing_cost_file(tmp_path):
    with pytest.raises(CostConfigError, match="cannot read"):
        build_config(gpu_hour=1, overhead_month=0, path=tmp_path / "missing.toml")


def test_invoice_months_and_price():
    invoice = parse_invoice("Date,Images,Amount,Note\n2026-10-01,100,4.00,a\n2026-10-15,100,4.00,b\n2026-11-02,200,8,c\n")
    assert (invoice.rows, invoice.months, invoice.images) == (3, 2, 400)
    assert invoice.price_per_image == pytest.approx(0.04)
    assert invoice.monthly_volume == 200 and invoice.monthly_amount == pytest.approx(8)


@pytest.mark.parametrize("text, error", [
    ("day,images,amount\n", "lacks date"),
    ("date,images,amount\nsoon,1,1\n", "line 2"),
    ("date,images,amount\n2026-01-01,x,1\n", "not a number"),
    ("date,images,amount\n", "no images"),
])
def test_bad_invoices(text, error):
    with pytest.raises(InvoiceError, match=error):
        parse_invoice(text)
