import ast
import json
from pathlib import Path

import pytest

from lib.claims import ClaimsLedger, ledger_table, passes, source_claims


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


def test_within_a_relative_tolerance():
    assert passes(0.74, {"value": 0.75, "rule": "within", "relative_tolerance": 0.05})
    assert not passes(7.0, {"value": 11.2, "rule": "within", "relative_tolerance": 0.15})


def test_stated_checks_decide_the_verdict():
    from lib.claims import check, source_claims

    claims = source_claims()
    assert check("C10", dora_extra_gib=1.2) == "holds"          # 1.40 GiB +- 25%
    assert check("C10", dora_extra_gib=2.65) == "does not hold"
    assert check("C01", full_finetune_gib=90) == "holds"         # at least 44.7 GiB
    assert check("C01", full_finetune_gib=40) == "does not hold"
    assert check("C14", saving_percent=36) == "holds" and check("C14", saving_percent=30) == "does not hold"
    assert check("C03", trainable_millions=110, share_percent=4.5) == "holds"
    assert check("C03", trainable_millions=110, share_percent=2.0) == "does not hold"  # every check must pass
    with pytest.raises(ValueError, match="C03: measured"):
        check("C03", trainable_millions=110)
    assert check("C32", speedup_percent=20) == "holds"           # between 9 and 40 %
    assert check("C32", speedup_percent=45) == "does not hold" and check("C32", speedup_percent=2) == "does not hold"
    with pytest.raises(KeyError, match="C12: no stated checks"):
        check("C12", seq=4096)
    assert check("C23", minutes_4b=45, minutes_12b=90, not_measured=("minutes_27b",)) == "depends"
    assert check("C23", minutes_4b=6, minutes_12b=90, not_measured=("minutes_27b",)) == "does not hold"
    with pytest.raises(ValueError, match="not measured"):
        check("C23", minutes_4b=45, minutes_12b=90, minutes_27b=150, not_measured=("minutes_27b",))
    for claim in claims.values():  # every claim states checks or says why it cannot; every check is well formed
        assert bool(claim.get("checks")) != bool(claim.get("argued")), claim["id"]
        for stated in claim.get("checks", []):
            assert stated["rule"] in ("within", "at_least", "at_most", "between") and stated["source_value"]
            assert "unit" in stated and stated["quantity"], (claim["id"], stated["name"])
            bounds = ("low", "high") if stated["rule"] == "between" else ("value",)
            assert all(isinstance(stated[b], (int, float)) for b in bounds), (claim["id"], stated["name"])


def test_a_caveat_turns_holds_into_depends(tmp_path):
    ledger = ClaimsLedger("09_inside_gemma3", tmp_path)
    assert ledger.measure("C27", "3.4 bits", "capacity", {"bits_per_parameter": 3.4}, caveat="runs unconverged") == "depends"
    assert "runs unconverged" in ledger.records[-1].note
    assert ledger.measure("C27", "1.0 bits", "capacity", {"bits_per_parameter": 1.0}, caveat="unconverged") == "does not hold"
    assert ledger.measure("C27", "3.4 bits", "capacity", {"bits_per_parameter": 3.4}) == "holds"


def test_settings_combine_and_a_proxy_never_decides(tmp_path):
    from lib.claims import combine

    assert combine({"4B": "holds", "12B": "holds"}) == ("holds", "")
    assert combine({"4B": "does not hold", "12B": "does not hold"}) == ("does not hold", "")
    assert combine({"4B": "holds", "12B": "does not hold"}) == ("depends", "holds for 4B; does not hold for 12B")
    ledger = ClaimsLedger("04_trinity_training", tmp_path)
    hours = {"4B": {"hours": 1.7}, "12B": {"hours": 2.7}}  # between 2 and 3 h
    assert ledger.measure("C30", "1.7 h, 2.7 h", "GPU", hours) == "depends"
    assert ledger.records[-1].note == "holds for 12B; does not hold for 4B; failing: 4B: hours 1.7 h, stated between 2 and 3"
    assert ledger.measure("C30", "2.7 h", "GPU", {"12B": {"hours": 2.7}}) == "holds"
    # a stand-in measurement is reported with what its checks gave, and never decides the claim
    assert ledger.measure("C18", "130 tokens/s", "GPU", {"tokens_per_second": 130}, proxy="a T4 estimate") == "depends"
    assert ledger.records[-1].note == "a T4 estimate; the stated checks alone: holds"
    assert ledger.measure("C18", "40 tokens/s", "GPU", {"tokens_per_second": 40}, proxy="a T4 estimate") == "depends"
    assert ledger.records[-1].note.endswith("the stated checks alone: does not hold")


def _ledger_calls():
    """(chapter, method, claim id, verdict node) of every ledger.record / ledger.measure call in the chapters."""
    calls = []
    for chapter in sorted(Path("chapters").glob("*.py")):
        for node in ast.walk(ast.parse(chapter.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("record", "measure") and getattr(node.func.value, "id", None) == "ledger"):
                claim_id = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
                verdict = node.args[2] if node.func.attr == "record" and len(node.args) > 2 else None
                calls.append((chapter.stem, node.func.attr, claim_id, verdict))
    return calls


def test_chapters_compute_no_verdict_of_a_claim_with_stated_checks():
    """A claim with numbers is measured (verdict from its checks); `record` is left for verdicts
    argued in words, so its verdict is a literal, never a comparison written in a cell."""
    claims = source_claims()
    calls = _ledger_calls()
    assert len(calls) >= 15, calls  # the parse finds the chapters' ledger calls
    for chapter, method, claim_id, verdict in calls:
        assert claim_id in claims, (chapter, claim_id)
        if method == "record":
            assert isinstance(verdict, ast.Constant), f"{chapter}: {claim_id}'s verdict is computed in the cell"
            assert not claims[claim_id].get("checks"), f"{chapter}: {claim_id} has stated checks; use ledger.measure"
    measured = {claim_id for _, method, claim_id, _ in calls if method == "measure"}
    stated = {claim_id for claim_id, claim in claims.items() if claim.get("checks")}
    assert stated <= measured, f"claims with checks no chapter measures: {sorted(stated - measured)}"



def test_measure_records_the_computed_verdict(tmp_path):
    from lib.claims import ClaimsLedger, read_records

    ledger = ClaimsLedger("02_memory_budget", tmp_path)
    assert ledger.measure("C15", "8-bit AdamW: 74% less", "states", {"saving_percent": 74.0}) == "holds"
    assert [(r.claim_id, r.verdict) for r in read_records(tmp_path)] == [("C15", "holds")]


def test_a_failing_measurement_names_the_checks_it_fails():
    from lib.claims import failing_checks

    terms = {"weights_gib": 7.0, "adapter_state_gib": 2.47, "activations_gib": 3.73, "total_gib": 15.62}
    assert failing_checks("C11", **terms) == ["adapter_state_gib 2.47 GiB, stated within 5.122 +- 25%",
                                              "activations_gib 3.73 GiB, stated within 2.328 +- 25%"]
    assert failing_checks("C11", **(terms | {"adapter_state_gib": 5.0, "activations_gib": 2.4})) == []


def test_a_chapter_knows_which_claims_it_recorded(tmp_path):
    ledger = ClaimsLedger("01_concepts", tmp_path)
    ledger.record("C05", "524,288", "holds", "LoRA", where="CPU: test")
    ledger.record("C03", "2.23%", "does not hold", "LoRA", where="CPU: test")
    ledger.record("C05", "524,288 in bf16", "holds", "DoRA", where="CPU: test")
    ClaimsLedger("04_trinity_training", tmp_path).record("C17", "2.6 -> 1.0", "does not hold", "Training")
    assert ledger.claim_ids == ["C05", "C03"]  # what the chapter shows as its own, not 04's C17
