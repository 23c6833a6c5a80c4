"""What a plate registration creates in ISPyB before an imager ever sees the plate.

SynchWeb joins every plate query through Container -> Dewar -> Shipping -> Proposal and every
sample through BLSample -> Crystal -> Protein, so a plate without those rows is invisible to
staff. In a facility's ISPyB the rows also sit under foreign keys (``Proposal.personId`` ->
Person, ``Dewar.shippingId`` -> Shipping...), so they must be created in that order.

A visit that exists is attached to as it is (its Proposal, its BLSession). One that does not
is created the way the user office does it: a Person, the Proposal, the BLSession. Then, per
plate, what registering a plate in SynchWeb creates: a Shipping and a Dewar of the proposal,
a Protein of the proposal (one mock protein, reused) and a Crystal of it for the samples.

The development schema (the core subset) has no Person, Shipping, Dewar, Protein or Crystal
table: there only the visit is made, and the plate's dewar and crystal stay empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, TableClause, column, inspect, select, table
from sqlalchemy.orm import Session

from chimp_worker.ispyb import tables as t

_VISIT = re.compile(r"^([A-Za-z]+)(\d+)-(\d+)$")
MOCK_PROTEIN = "mock-protein"
MOCK_LOGIN = "mock_imager"  # Person.login is unique: one mock principal investigator

# Facility tables outside the core subset, with the columns a registration fills in.
PERSON = table(
    "Person", column("personId"), column("familyName"), column("givenName"), column("login")
)
SHIPPING = table(
    "Shipping",
    column("shippingId"),
    column("proposalId"),
    column("shippingName"),
    column("shippingStatus"),
)
DEWAR = table(
    "Dewar", column("dewarId"), column("shippingId"), column("code"), column("dewarStatus")
)
PROTEIN = table(
    "Protein", column("proteinId"), column("proposalId"), column("name"), column("acronym")
)
CRYSTAL = table("Crystal", column("crystalId"), column("proteinId"), column("name"))
REGISTRATION_TABLES = ("Person", "Shipping", "Dewar", "Protein", "Crystal")


@dataclass(frozen=True)
class Registration:
    """The ids a new plate hangs from (dewar and crystal: None on the development schema)."""

    sessionId: int
    proposalId: int
    dewarId: int | None
    crystalId: int | None
    created_visit: bool


def parse_visit(visit: str) -> tuple[str, str, int]:
    """``mx23456-1`` -> ("mx", "23456", 1); ValueError naming the expected form."""
    match = _VISIT.match(visit)
    if match is None:
        raise ValueError(f"visit {visit!r}: expected the form mx23456-1")
    return match.group(1), match.group(2), int(match.group(3))


def has_registration_tables(session: Session) -> bool:
    """True on a facility's full schema, False on the development core subset."""
    names = set(inspect(session.connection()).get_table_names())
    return all(name in names for name in REGISTRATION_TABLES)


def register_plate(session: Session, visit: str, barcode: str) -> Registration:
    """The visit (attached or created), and the plate's shipment, dewar and crystal."""
    code, number, visit_number = parse_visit(visit)
    full = has_registration_tables(session)
    session_id, proposal_id, created = _visit(session, code, number, visit_number, full=full)
    if not full:
        return Registration(session_id, proposal_id, None, None, created)
    shipping_id = _insert(
        session,
        SHIPPING,
        proposalId=proposal_id,
        shippingName=f"{barcode} shipment",
        shippingStatus="at facility",
    )
    dewar_id = _insert(
        session, DEWAR, shippingId=shipping_id, code=f"{barcode}-dewar", dewarStatus="at facility"
    )
    protein_id = session.scalar(
        select(PROTEIN.c.proteinId).where(
            PROTEIN.c.proposalId == proposal_id, PROTEIN.c.acronym == MOCK_PROTEIN
        )
    )
    if protein_id is None:
        protein_id = _insert(
            session, PROTEIN, proposalId=proposal_id, name="Mock protein", acronym=MOCK_PROTEIN
        )
    crystal_id = _insert(session, CRYSTAL, proteinId=protein_id, name=f"{barcode} crystal")
    return Registration(session_id, proposal_id, dewar_id, crystal_id, created)


def _visit(
    session: Session, code: str, number: str, visit_number: int, *, full: bool
) -> tuple[int, int, bool]:
    """(sessionId, proposalId, created) of the visit; created with its Proposal if missing."""
    proposal = session.scalar(
        select(t.Proposal).where(
            t.Proposal.proposalCode == code, t.Proposal.proposalNumber == number
        )
    )
    created = False
    if proposal is None:
        person_id = 0
        if full:  # Proposal.personId is a foreign key to Person in a facility's schema
            person_id = session.scalar(
                select(PERSON.c.personId).where(PERSON.c.login == MOCK_LOGIN)
            ) or _insert(session, PERSON, familyName="Imager", givenName="Mock", login=MOCK_LOGIN)
        proposal = t.Proposal(
            proposalCode=code,
            proposalNumber=number,
            personId=person_id,
            title="Mock imager plates",
            proposalType="MX",
        )
        session.add(proposal)
        session.flush()
        created = True
    found = session.scalar(
        select(t.BLSession.sessionId).where(
            t.BLSession.proposalId == proposal.proposalId,
            t.BLSession.visit_number == visit_number,
        )
    )
    if found is not None:
        return found, proposal.proposalId, created
    visit = t.BLSession(
        proposalId=proposal.proposalId, visit_number=visit_number, beamLineName="VMXi"
    )
    session.add(visit)
    session.flush()
    return visit.sessionId, proposal.proposalId, True


def _insert(session: Session, target: TableClause, **values: object) -> int:
    """Insert one row into a lightweight table; returns its auto-increment id."""
    result = cast("CursorResult[Any]", session.execute(target.insert().values(**values)))
    return int(result.lastrowid)
