import json

import pytest

from lib.claims import ClaimsLedger, ledger_table, source_claims, verdict_within


def test_source_claims_have_stable_ids():
    claims = source_claims()
    assert list(claims)[:3] == ["C01", "C02", "C03"]
    assert all(c["claim"] and c["seeds"] for c in claims.values())


def test_record_rejects_unknown_ids_and_verdicts(tmp_path):
    ledger = ClaimsLedger("01_concepts", tmp_path)
    with pytest.raises(KeyError, match="C99"):
        ledger.record("C99", "x", "holds", "s")
    with pytest.raises(ValueError, match="verdict 'maybe'"):
        ledger.record("C05", "x", "maybe", "s")
    assert not ledger.path.exists()  # nothing half-recorded


def test_ledger_joins_chapters_in_order_and_a_rerun_replaces_a_chapters_records(tmp_path):
    ClaimsLedger("04_trinity_training", tmp_path).record("C17", "2.6 -> 1.0", "does not hold", "Training")
    first = ClaimsLedger("01_concepts", tmp_path)
    first.record("C05", "524,288", "holds", "LoRA", where="CPU: test")
    first.record("C05", "524,288 again", "holds", "LoRA", where="CPU: test")  # same section: replaced
    table = ledger_table(tmp_path)
    assert len(table) == len(source_claims())
    assert table.set_index("id").loc["C05", "measured"] == "524,288 again"
    assert table.set_index("id").loc["C01", "verdict"] == "not measured yet"
    measured = ledger_table(tmp_path, only_measured=True)
    assert list(measured["id"]) == ["C05", "C17"]
    ClaimsLedger("01_concepts", tmp_path)  # the chapter runs again: its old records go
    assert list(ledger_table(tmp_path, only_measured=True)["id"]) == ["C17"]
    assert json.loads((tmp_path / "claims" / "04_trinity_training.json").read_text())[0]["verdict"] == "does not hold"


def test_verdict_within():
    assert verdict_within(0.74, 0.75, 0.05) == "holds"
    assert verdict_within(7.0, 11.2, 0.15) == "does not hold"
