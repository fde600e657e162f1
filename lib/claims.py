"""The claims ledger: each quantitative claim of the source documents beside what the course measured.

The claims live in data/claims/source-claims.json (stable ids C01..C32). Where a claim states
numbers, its `checks` hold them (value, unit, rule, tolerance) and `check` computes the verdict
from what was measured, so no threshold is written in a chapter. A chapter records what it
measured with `ClaimsLedger(chapter).measure(...)` (verdict from the checks) or `.record(...)`
(a verdict argued in the note, for claims without a number to check); the records go to
<output>/claims/<chapter>.json (rewritten whole, atomically, at every record, and started afresh
when the chapter runs again). `ledger_table` joins the claims with every chapter's records, in
chapter order, so a later chapter's table holds everything measured before it.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from .artifacts import read_json, write_json

ROOT = Path(__file__).resolve().parent.parent
SOURCE_CLAIMS = ROOT / "data" / "claims" / "source-claims.json"
VERDICTS = ("holds", "does not hold", "depends")


def source_claims(path: str | Path = SOURCE_CLAIMS) -> dict[str, dict]:
    """{id: {"id", "claim", "seeds"}} of the source documents' claims."""
    return {claim["id"]: claim for claim in read_json(path)["claims"]}


def hardware() -> str:
    """A short description of where this process measures: the GPU's name, else the CPU's."""
    import os

    import torch

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name()}"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"CPU: {model}, {os.cpu_count()} cores"


def passes(measured: float, check: dict) -> bool:
    """Whether `measured` (in the check's unit) satisfies one stated check (see the claims file's
    `checks` note: rule "within", "at_least", "at_most" or "between"). Raises ValueError for another
    rule."""
    if check["rule"] == "between":
        return check["low"] <= measured <= check["high"]
    value = check["value"]
    tolerance = check.get("tolerance", 0.0) + check.get("relative_tolerance", 0.0) * abs(value)
    rules = {"within": lambda: abs(measured - value) <= tolerance, "at_least": lambda: measured >= value - tolerance,
             "at_most": lambda: measured <= value + tolerance}
    if check["rule"] not in rules:
        raise ValueError(f"check {check.get('name')!r}: rule {check['rule']!r}, use one of {sorted(rules) + ['between']}")
    return rules[check["rule"]]()


def check(claim_id: str, claims: dict[str, dict] | None = None, not_measured: tuple[str, ...] = (),
          **measured: float) -> str:
    """The verdict on a claim from its stated checks: "holds" when every check passes for the
    measured value of the same name (`check("C10", dora_extra_gib=1.2)`), else "does not hold".
    `not_measured` names stated checks that could not be measured here: if the others pass the
    verdict is "depends" (a claim is not confirmed in part).

    Raises KeyError for an unknown claim or one that states no checks, ValueError when the measured
    names plus `not_measured` are not exactly the claim's check names.
    """
    stated = {c["name"]: c for c in _stated_checks(claim_id, claims)}
    if set(measured) | set(not_measured) != set(stated) or set(measured) & set(not_measured):
        raise ValueError(f"{claim_id}: measured {sorted(measured)}, not measured {sorted(not_measured)}; "
                         f"the claim's checks are {sorted(stated)}")
    if failing_checks(claim_id, claims, **measured):
        return "does not hold"
    return "depends" if not_measured else "holds"


def _stated_checks(claim_id: str, claims: dict[str, dict] | None) -> list[dict]:
    claims = claims or source_claims()
    if claim_id not in claims or not claims[claim_id].get("checks"):
        raise KeyError(f"{claim_id}: no stated checks in {SOURCE_CLAIMS}")
    return claims[claim_id]["checks"]


def failing_checks(claim_id: str, claims: dict[str, dict] | None = None, **measured: float) -> list[str]:
    """What fails among the claim's stated checks for the `measured` values of the same names, as
    text ("adapter_state_gib 2.47 GiB, stated within 5.122 +- 25%"), in the claims file's order;
    [] when all pass. Raises KeyError as `check` does."""
    return [f"{c['name']} {float(measured[c['name']]):.4g} {c['unit']}, stated {_stated(c)}"
            for c in _stated_checks(claim_id, claims)
            if c["name"] in measured and not passes(float(measured[c["name"]]), c)]


def _stated(c: dict) -> str:
    """A stated check as text: "within 5.122 +- 25%", "at least 2", "between 30 and 60"."""
    if c["rule"] == "between":
        return f"between {c['low']:g} and {c['high']:g}"
    text = f"{c['rule'].replace('_', ' ')} {c['value']:g}"
    if c.get("tolerance"):
        text += f" +- {c['tolerance']:g}"
    if c.get("relative_tolerance"):
        text += f" +- {c['relative_tolerance']:.0%}"
    return text


def combine(verdicts: dict[str, str]) -> tuple[str, str]:
    """One verdict from the verdicts of several settings ({setting: verdict}), and a note for a
    mixed result: "holds" where every setting holds, "does not hold" where none does, else
    "depends" with the note naming where it holds and where not."""
    kinds = set(verdicts.values())
    if len(kinds) == 1:
        return kinds.pop(), ""
    by_verdict = {v: [s for s, w in verdicts.items() if w == v] for v in VERDICTS if v in kinds}
    return "depends", "; ".join(f"{v} for {', '.join(settings)}" for v, settings in by_verdict.items())


@dataclass(frozen=True)
class Measurement:
    claim_id: str
    measured: str
    verdict: str
    chapter: str
    section: str
    hardware: str
    note: str = ""


class ClaimsLedger:
    """The records of one chapter. Raises KeyError for an unknown claim id, ValueError for a
    verdict outside VERDICTS."""

    def __init__(self, chapter: str, output_dir: str | Path = "output", claims_path: str | Path = SOURCE_CLAIMS):
        self.chapter = chapter
        self.path = Path(output_dir) / "claims" / f"{chapter}.json"
        self.claims = source_claims(claims_path)
        self.records: list[Measurement] = []
        self.path.unlink(missing_ok=True)  # a rerun replaces this chapter's records

    @property
    def claim_ids(self) -> list[str]:
        """The ids of the claims this chapter has recorded so far, in the order first recorded."""
        return list(dict.fromkeys(r.claim_id for r in self.records))

    def record(self, claim_id: str, measured: str, verdict: str, section: str, note: str = "",
               where: str | None = None) -> None:
        """Add one measurement and save. `where` defaults to this machine (`hardware()`)."""
        if claim_id not in self.claims:
            raise KeyError(f"unknown claim id {claim_id!r}; ids are listed in {SOURCE_CLAIMS}")
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r} for {claim_id}: use one of {VERDICTS}")
        entry = Measurement(claim_id, measured, verdict, self.chapter, section, where or hardware(), note)
        self.records = [r for r in self.records if not (r.claim_id == claim_id and r.section == section)] + [entry]
        write_json(self.path, [asdict(r) for r in self.records])

    def measure(self, claim_id: str, measured: str, section: str, values: dict, note: str = "",
                where: str | None = None, caveat: str | None = None, proxy: str | None = None,
                not_measured: tuple[str, ...] = ()) -> str:
        """Record a measurement whose verdict `check` computes from the claim's stated checks;
        returns the verdict.

        `values`: {check name: measured value}, or {setting: {check name: value}} for a claim
        measured in several settings (model sizes, GPUs): `combine` joins their verdicts.
        `caveat`: why a passing measurement only bounds the claim (e.g. runs that did not
        converge): "holds" becomes "depends". `proxy`: what the measured quantity stands in for
        (another model size, an estimate): the verdict is "depends" whatever the checks give, and
        the note says what they gave. `not_measured`: as in `check`. Raises as `check` does.
        """
        settings = values if all(isinstance(v, dict) for v in values.values()) else {"": values}
        verdict, mixed = combine({setting: check(claim_id, self.claims, not_measured, **numbers)
                                  for setting, numbers in settings.items()})
        failing = [f"{setting + ': ' if setting else ''}{text}" for setting, numbers in settings.items()
                   for text in failing_checks(claim_id, self.claims, **numbers)]
        notes = [note, mixed, "failing: " + "; ".join(failing) if failing else ""]
        if not_measured:
            notes.append(f"not measured: {', '.join(not_measured)}")
        if proxy:
            notes.append(f"{proxy}; the stated checks alone: {verdict}")
            verdict = "depends"
        elif caveat and verdict == "holds":
            verdict = "depends"
            notes.append(caveat)
        self.record(claim_id, measured, verdict, section, "; ".join(filter(None, notes)), where)
        return verdict


def read_records(output_dir: str | Path = "output") -> list[Measurement]:
    """Every chapter's records under <output_dir>/claims, in chapter order (chapters are numbered)."""
    folder = Path(output_dir) / "claims"
    files = sorted(folder.glob("*.json")) if folder.exists() else []
    return [Measurement(**row) for path in files for row in read_json(path)]


def ledger_table(output_dir: str | Path = "output", only_measured: bool = False, claims_path=SOURCE_CLAIMS):
    """A pandas DataFrame: one row per (claim, measurement); claims measured nowhere yet get one
    row with verdict "not measured yet" unless `only_measured`."""
    import pandas as pd

    claims = source_claims(claims_path)
    by_claim: dict[str, list[Measurement]] = {}
    for record in read_records(output_dir):
        by_claim.setdefault(record.claim_id, []).append(record)
    rows = []
    for claim_id, claim in claims.items():
        records = by_claim.get(claim_id, [])
        for r in records:
            rows.append({"id": claim_id, "claim": claim["claim"], "measured": r.measured, "verdict": r.verdict,
                         "where": f"{r.chapter} § {r.section}; {r.hardware}", "note": r.note})
        if not records and not only_measured:
            rows.append({"id": claim_id, "claim": claim["claim"], "measured": "", "verdict": "not measured yet",
                         "where": "", "note": ""})
    return pd.DataFrame(rows)
