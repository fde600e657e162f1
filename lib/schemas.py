"""Relational schemas for Ghost Architect (chapter 08): generated first, so every label is exact.

A schema is a few tables of one application domain (a shop, a clinic, a school, ...) with typed
columns, primary keys, foreign keys, NOT NULL, UNIQUE and defaults. `generate_schema(seed)` draws
one deterministically: the domain, which entities appear (each with the entities it references),
which optional columns each table gets, and the naming conventions (plural or singular table
names, `id` or `<table>_id` keys), so that two schemas of one domain differ the way two real
applications do. `Schema.ddl()` writes it as SQLite-compatible CREATE TABLE statements, referenced
tables first.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One column: SQL type as written in DDL, constraints, and the (table, column) it references."""

    name: str
    type: str
    primary_key: bool = False
    not_null: bool = False
    unique: bool = False
    default: str | None = None  # SQL literal, e.g. "0", "'pending'", "CURRENT_TIMESTAMP"
    references: tuple[str, str] | None = None

    def ddl(self) -> str:
        parts = [self.name, self.type]
        if self.primary_key:
            parts.append("PRIMARY KEY")
        if self.not_null and not self.primary_key:
            parts.append("NOT NULL")
        if self.unique:
            parts.append("UNIQUE")
        if self.default is not None:
            parts.append(f"DEFAULT {self.default}")
        if self.references:
            parts.append(f"REFERENCES {self.references[0]}({self.references[1]})")
        return " ".join(parts)


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]

    @property
    def primary_key(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.primary_key)

    @property
    def foreign_keys(self) -> tuple[tuple[str, str, str], ...]:
        """(column, referenced table, referenced column) for each foreign key."""
        return tuple((c.name, *c.references) for c in self.columns if c.references)

    def ddl(self) -> str:
        body = ",\n".join(f"  {c.ddl()}" for c in self.columns)
        return f"CREATE TABLE {self.name} (\n{body}\n);"


@dataclass(frozen=True)
class Schema:
    domain: str
    tables: tuple[Table, ...]
    seed: int = 0

    def table(self, name: str) -> Table:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(f"schema has no table {name!r}; tables: {[t.name for t in self.tables]}")

    def subset(self, names) -> "Schema":
        """The named tables only (foreign keys to tables left out are kept as written)."""
        wanted = set(names)
        return Schema(self.domain, tuple(t for t in self.tables if t.name in wanted), self.seed)

    def ddl(self) -> str:
        """CREATE TABLE statements, each table after the tables it references."""
        return "\n\n".join(t.ddl() for t in self.tables)


# ------------------------------------------------------------------ the domains
#
# Each entity: its columns (name, type, constraints) and the entities it references. A column spec
# is (name, type, flags) with flags a string of: n = NOT NULL, u = UNIQUE, o = optional (drawn
# with probability 1/2), and an optional default after "=". Names are what such applications use.

DOMAINS: dict[str, dict[str, dict]] = {
    "shop": {
        "customer": {"columns": [("email", "VARCHAR(255)", "nu"), ("full_name", "VARCHAR(120)", "n"),
                                 ("phone", "VARCHAR(32)", "o"), ("created_at", "TIMESTAMP", "n", "CURRENT_TIMESTAMP"),
                                 ("marketing_opt_in", "BOOLEAN", "no", "0")], "refs": []},
        "category": {"columns": [("name", "VARCHAR(80)", "nu"), ("slug", "VARCHAR(80)", "uo")], "refs": []},
        "product": {"columns": [("sku", "VARCHAR(40)", "nu"), ("name", "VARCHAR(200)", "n"),
                                ("price", "DECIMAL(10,2)", "n"), ("stock_quantity", "INTEGER", "n", "0"),
                                ("description", "TEXT", "o"), ("is_active", "BOOLEAN", "no", "1")],
                    "refs": ["category"]},
        "order": {"columns": [("status", "VARCHAR(20)", "n", "'pending'"), ("ordered_at", "TIMESTAMP", "n"),
                              ("total_amount", "DECIMAL(10,2)", "n"), ("shipping_address", "TEXT", "o")],
                  "refs": ["customer"], "table": "purchase_order"},
        "order_item": {"columns": [("quantity", "INTEGER", "n", "1"), ("unit_price", "DECIMAL(10,2)", "n")],
                       "refs": ["order", "product"]},
        "review": {"columns": [("rating", "INTEGER", "n"), ("body", "TEXT", "o"), ("created_at", "TIMESTAMP", "n")],
                   "refs": ["product", "customer"]},
    },
    "clinic": {
        "patient": {"columns": [("first_name", "VARCHAR(60)", "n"), ("last_name", "VARCHAR(60)", "n"),
                                ("date_of_birth", "DATE", "n"), ("insurance_number", "VARCHAR(40)", "uo"),
                                ("phone", "VARCHAR(32)", "o")], "refs": []},
        "doctor": {"columns": [("full_name", "VARCHAR(120)", "n"), ("specialty", "VARCHAR(80)", "n"),
                               ("license_number", "VARCHAR(40)", "nu")], "refs": []},
        "room": {"columns": [("code", "VARCHAR(10)", "nu"), ("floor", "INTEGER", "o")], "refs": []},
        "appointment": {"columns": [("scheduled_at", "TIMESTAMP", "n"), ("duration_minutes", "INTEGER", "n", "30"),
                                    ("status", "VARCHAR(20)", "n", "'booked'"), ("reason", "TEXT", "o")],
                        "refs": ["patient", "doctor", "room"]},
        "prescription": {"columns": [("medication", "VARCHAR(120)", "n"), ("dosage", "VARCHAR(60)", "n"),
                                     ("issued_on", "DATE", "n"), ("refills", "INTEGER", "o", "0")],
                         "refs": ["appointment"]},
        "invoice": {"columns": [("amount", "DECIMAL(10,2)", "n"), ("issued_on", "DATE", "n"),
                                ("paid", "BOOLEAN", "n", "0")], "refs": ["patient"]},
    },
    "school": {
        "student": {"columns": [("student_number", "VARCHAR(20)", "nu"), ("full_name", "VARCHAR(120)", "n"),
                                ("email", "VARCHAR(255)", "uo"), ("enrolled_on", "DATE", "n")], "refs": []},
        "teacher": {"columns": [("full_name", "VARCHAR(120)", "n"), ("email", "VARCHAR(255)", "nu"),
                                ("department", "VARCHAR(80)", "o")], "refs": []},
        "course": {"columns": [("code", "VARCHAR(12)", "nu"), ("title", "VARCHAR(200)", "n"),
                               ("credits", "INTEGER", "n", "3")], "refs": ["teacher"]},
        "enrollment": {"columns": [("enrolled_at", "TIMESTAMP", "n"), ("grade", "VARCHAR(2)", "o")],
                       "refs": ["student", "course"]},
        "assignment": {"columns": [("title", "VARCHAR(200)", "n"), ("due_date", "DATE", "n"),
                                   ("max_points", "INTEGER", "n", "100")], "refs": ["course"]},
        "submission": {"columns": [("submitted_at", "TIMESTAMP", "n"), ("score", "REAL", "o")],
                       "refs": ["assignment", "student"]},
    },
    "library": {
        "author": {"columns": [("name", "VARCHAR(120)", "n"), ("birth_year", "INTEGER", "o")], "refs": []},
        "book": {"columns": [("isbn", "VARCHAR(17)", "nu"), ("title", "VARCHAR(250)", "n"),
                             ("published_year", "INTEGER", "o"), ("language", "VARCHAR(8)", "o", "'en'")],
                 "refs": ["author"]},
        "member": {"columns": [("card_number", "VARCHAR(20)", "nu"), ("full_name", "VARCHAR(120)", "n"),
                               ("email", "VARCHAR(255)", "o"), ("joined_on", "DATE", "n")], "refs": []},
        "copy": {"columns": [("barcode", "VARCHAR(30)", "nu"), ("shelf", "VARCHAR(20)", "o"),
                             ("condition", "VARCHAR(20)", "n", "'good'")], "refs": ["book"], "table": "book_copy"},
        "loan": {"columns": [("borrowed_on", "DATE", "n"), ("due_on", "DATE", "n"), ("returned_on", "DATE", "o")],
                 "refs": ["copy", "member"]},
        "reservation": {"columns": [("reserved_at", "TIMESTAMP", "n"), ("status", "VARCHAR(20)", "n", "'waiting'")],
                        "refs": ["book", "member"]},
    },
    "logistics": {
        "warehouse": {"columns": [("code", "VARCHAR(10)", "nu"), ("city", "VARCHAR(80)", "n"),
                                  ("capacity_m3", "REAL", "o")], "refs": []},
        "carrier": {"columns": [("name", "VARCHAR(120)", "nu"), ("tracking_url", "VARCHAR(255)", "o")], "refs": []},
        "shipment": {"columns": [("tracking_number", "VARCHAR(40)", "nu"), ("status", "VARCHAR(20)", "n", "'created'"),
                                 ("weight_kg", "REAL", "n"), ("shipped_at", "TIMESTAMP", "o"),
                                 ("delivered_at", "TIMESTAMP", "o")], "refs": ["warehouse", "carrier"]},
        "package": {"columns": [("label", "VARCHAR(40)", "n"), ("length_cm", "REAL", "o"), ("fragile", "BOOLEAN", "n", "0")],
                    "refs": ["shipment"]},
        "driver": {"columns": [("full_name", "VARCHAR(120)", "n"), ("license_plate", "VARCHAR(16)", "u")],
                   "refs": ["carrier"]},
        "delivery_event": {"columns": [("occurred_at", "TIMESTAMP", "n"), ("location", "VARCHAR(120)", "o"),
                                       ("note", "TEXT", "o")], "refs": ["shipment"]},
    },
    "hotel": {
        "guest": {"columns": [("full_name", "VARCHAR(120)", "n"), ("email", "VARCHAR(255)", "nu"),
                              ("country", "VARCHAR(2)", "o")], "refs": []},
        "room_type": {"columns": [("name", "VARCHAR(60)", "nu"), ("nightly_rate", "DECIMAL(8,2)", "n"),
                                  ("max_occupancy", "INTEGER", "n", "2")], "refs": []},
        "room": {"columns": [("number", "VARCHAR(8)", "nu"), ("floor", "INTEGER", "n")], "refs": ["room_type"]},
        "booking": {"columns": [("check_in", "DATE", "n"), ("check_out", "DATE", "n"), ("adults", "INTEGER", "n", "1"),
                                ("status", "VARCHAR(20)", "n", "'confirmed'")], "refs": ["guest", "room"]},
        "payment": {"columns": [("amount", "DECIMAL(10,2)", "n"), ("paid_at", "TIMESTAMP", "n"),
                                ("method", "VARCHAR(20)", "o")], "refs": ["booking"]},
    },
}


def _plural(name: str) -> str:
    if name.endswith("y") and name[-2] not in "aeiou":
        return name[:-1] + "ies"
    return name + ("es" if name.endswith(("s", "x", "ch", "sh")) else "s")


@dataclass(frozen=True)
class Naming:
    """One application's conventions."""

    plural_tables: bool
    key_style: str  # "id" or "prefixed" (customer_id as the customer table's own key)
    key_type: str  # "INTEGER" or "BIGINT"

    def table(self, entity: str, spec: dict) -> str:
        base = spec.get("table", entity)
        return _plural(base) if self.plural_tables else base

    def primary_key(self, entity: str) -> str:
        return "id" if self.key_style == "id" else f"{entity}_id"


def _closure(domain: dict, chosen: set[str]) -> list[str]:
    """`chosen` plus everything it references, in an order where references come first."""
    ordered: list[str] = []

    def visit(entity: str) -> None:
        if entity in ordered:
            return
        for ref in domain[entity]["refs"]:
            visit(ref)
        ordered.append(entity)

    for entity in sorted(chosen):
        visit(entity)
    return ordered


def generate_schema(seed: int, domain: str | None = None, min_tables: int = 3, max_tables: int = 5) -> Schema:
    """A schema drawn deterministically from `seed` (and `domain`, else drawn too).

    Raises ValueError for an unknown domain or a table count the domain cannot give.
    """
    rng = random.Random(seed)
    if domain is None:
        domain = rng.choice(sorted(DOMAINS))
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}: choose one of {sorted(DOMAINS)}")
    entities = DOMAINS[domain]
    if not 1 <= min_tables <= max_tables <= len(entities):
        raise ValueError(f"domain {domain!r} has {len(entities)} entities: min_tables={min_tables}, "
                         f"max_tables={max_tables} cannot be met")
    naming = Naming(rng.random() < 0.6, rng.choice(["id", "prefixed"]), rng.choice(["INTEGER", "INTEGER", "BIGINT"]))
    target = rng.randint(min_tables, max_tables)
    chosen: set[str] = set()
    while len(_closure(entities, chosen)) < target:
        candidates = [e for e in sorted(entities) if e not in chosen
                      and len(_closure(entities, chosen | {e})) <= max_tables]
        if not candidates:
            break
        chosen.add(rng.choice(candidates))
    tables = []
    for entity in _closure(entities, chosen):
        spec = entities[entity]
        columns = [Column(naming.primary_key(entity), naming.key_type, primary_key=True)]
        for ref in spec["refs"]:
            columns.append(Column(f"{ref}_id", naming.key_type, not_null=rng.random() < 0.85,
                                  references=(naming.table(ref, entities[ref]), naming.primary_key(ref))))
        for name, sql_type, flags, *default in spec["columns"]:
            if "o" in flags and rng.random() < 0.5:
                continue
            columns.append(Column(name, sql_type, not_null="n" in flags, unique="u" in flags,
                                  default=default[0] if default else None))
        tables.append(Table(naming.table(entity, spec), tuple(columns)))
    return Schema(domain, tuple(tables), seed)
