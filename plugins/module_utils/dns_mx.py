# -*- coding: utf-8 -*-
# Copyright: durable-mx contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compare the MX set a mail domain publishes in DNS with the one the inventory expects.

Used by the dns_mx_check module. The comparison is pure: it asks a `query(name, rdtype)`
callable for answers, so the unit tests give it a fake and only `dnspython_query` touches the
network (one UDP query per name and type, to one name server, recursion not desired).

What counts as drift, each reported once with the name, what was expected and what was found:

* mx_missing      an expected exchange is not published
* mx_unexpected   an exchange is published that the inventory does not know
* mx_preference   an expected exchange is published with another preference
* address         an exchange's A records differ from the expected addresses
* vip             the VIP's name does not resolve to exactly the VIP address, or is not the
                  exchange with the lowest preference (the one senders try first)
* rcode           a query got no usable answer (NXDOMAIN, REFUSED, SERVFAIL, timeout...)
* not_authoritative  the server answered without the AA flag: it is not serving the zone
* recursion_available the server offers recursion: an authoritative-only server must not
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence


class Answer(NamedTuple):
    """One DNS answer, reduced to what the comparison needs."""

    rcode: str                    # NOERROR, NXDOMAIN, REFUSED, SERVFAIL, TIMEOUT, ERROR ...
    authoritative: bool           # AA flag
    recursion_available: bool     # RA flag
    records: List[Any]            # MX: [(preference, exchange)], A/AAAA: [address]
    detail: str = ""              # why there is no answer (network error text)


Query = Callable[[str, str], Answer]


def fqdn(name: str) -> str:
    """Lower case, without the final dot: how names are compared."""
    return name.strip().rstrip(".").lower()


def _drift(kind: str, name: str, expected: Any, found: Any, message: str) -> Dict[str, Any]:
    return {"kind": kind, "name": name, "expected": expected, "found": found, "message": message}


def _check_answer(answer: Answer, name: str, rdtype: str, drift: List[Dict[str, Any]], flags: Dict[str, bool]) -> bool:
    """Record rcode/flag drift for one answer; True when it carries data to compare."""
    if answer.rcode not in ("NOERROR", "NXDOMAIN"):
        drift.append(_drift("rcode", name, "NOERROR", answer.rcode,
                            "%s %s: no answer (%s)%s" % (name, rdtype, answer.rcode,
                                                         ": " + answer.detail if answer.detail else "")))
        return False
    if not answer.authoritative and not flags["not_authoritative"]:
        flags["not_authoritative"] = True
        drift.append(_drift("not_authoritative", name, True, False,
                            "%s %s: the answer is not authoritative (AA flag unset): the server does not serve "
                            "the zone" % (name, rdtype)))
    if answer.recursion_available and not flags["recursion_available"]:
        flags["recursion_available"] = True
        drift.append(_drift("recursion_available", name, False, True,
                            "the server offers recursion (RA flag set); an authoritative-only server must not"))
    return True


def normalize_expected(expected_mx: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Expected MX entries as {preference: int, exchange: fqdn, addresses: sorted list}."""
    out = []
    for entry in expected_mx:
        out.append({
            "preference": int(entry["preference"]),
            "exchange": fqdn(entry["exchange"]),
            "addresses": sorted(str(a) for a in (entry.get("addresses") or [])),
        })
    return sorted(out, key=lambda e: (e["preference"], e["exchange"]))


def check_domain(query: Query, domain: str, expected_mx: Sequence[Dict[str, Any]],
                 vip: Optional[Dict[str, str]] = None, address_type: str = "A") -> Dict[str, Any]:
    """Ask one name server (through `query`) and compare with the expectation.

    Returns {"published": {"mx": [...], "addresses": {name: [...]}}, "drift": [...]}.
    """
    domain = fqdn(domain)
    expected = normalize_expected(expected_mx)
    drift: List[Dict[str, Any]] = []
    flags = {"not_authoritative": False, "recursion_available": False}
    published: Dict[str, Any] = {"mx": [], "addresses": {}}

    answer = query(domain, "MX")
    mx: Dict[str, int] = {}
    if _check_answer(answer, domain, "MX", drift, flags):
        for preference, exchange in answer.records:
            mx[fqdn(exchange)] = int(preference)
    published["mx"] = [{"preference": p, "exchange": e} for e, p in sorted(mx.items(), key=lambda i: (i[1], i[0]))]

    wanted = {e["exchange"]: e for e in expected}
    for entry in expected:
        name = entry["exchange"]
        if name not in mx:
            drift.append(_drift("mx_missing", name, entry["preference"], None,
                                "MX %d %s is not published for %s" % (entry["preference"], name, domain)))
        elif mx[name] != entry["preference"]:
            drift.append(_drift("mx_preference", name, entry["preference"], mx[name],
                                "MX %s has preference %d, expected %d" % (name, mx[name], entry["preference"])))
    for name, preference in sorted(mx.items()):
        if name not in wanted:
            drift.append(_drift("mx_unexpected", name, None, preference,
                                "MX %d %s is published for %s but not in the inventory" % (preference, name, domain)))

    # Addresses of every exchange, expected or published, and of the VIP's name.
    names = sorted(set(wanted) | set(mx) | ({fqdn(vip["name"])} if vip else set()))
    for name in names:
        a = query(name, address_type)
        found = sorted(str(r) for r in a.records) if _check_answer(a, name, address_type, drift, flags) else None
        published["addresses"][name] = found
        entry = wanted.get(name)
        if entry is not None and entry["addresses"] and found is not None and found != entry["addresses"]:
            drift.append(_drift("address", name, entry["addresses"], found,
                                "%s %s is %s, expected %s" % (name, address_type, found or "missing", entry["addresses"])))

    if vip:
        name, address = fqdn(vip["name"]), str(vip["address"])
        found = published["addresses"].get(name)
        if found is not None and found != [address]:
            drift.append(_drift("vip", name, [address], found,
                                "the VIP's name %s resolves to %s, expected only the VIP %s" % (name, found or "nothing", address)))
        if mx:
            lowest = min(mx.values())
            first = sorted(e for e, p in mx.items() if p == lowest)
            if name not in first:
                drift.append(_drift("vip", name, name, first,
                                    "the VIP's name %s is not the first MX of %s (lowest preference %d: %s)"
                                    % (name, domain, lowest, ", ".join(first))))
    return {"published": published, "drift": drift}


def dnspython_query(nameserver: str, port: int = 53, timeout: float = 3.0) -> Query:
    """A `query` that asks one name server with dnspython (UDP, TCP when truncated), RD unset."""
    import dns.exception
    import dns.flags
    import dns.message
    import dns.name
    import dns.query
    import dns.rcode
    import dns.rdatatype

    def query(name: str, rdtype: str) -> Answer:
        qname = dns.name.from_text(name)
        request = dns.message.make_query(qname, rdtype)
        request.flags &= ~dns.flags.RD
        try:
            response = dns.query.udp(request, nameserver, timeout=timeout, port=port)
            if response.flags & dns.flags.TC:
                response = dns.query.tcp(request, nameserver, timeout=timeout, port=port)
        except dns.exception.Timeout:
            return Answer("TIMEOUT", False, False, [], "no answer from %s:%d within %ss" % (nameserver, port, timeout))
        except (OSError, dns.exception.DNSException) as exc:
            return Answer("ERROR", False, False, [], "%s:%d: %s" % (nameserver, port, exc))
        wanted = dns.rdatatype.from_text(rdtype)
        records: List[Any] = []
        for rrset in response.answer:
            if rrset.name != qname or rrset.rdtype != wanted:
                continue
            for rdata in rrset:
                if wanted == dns.rdatatype.MX:
                    records.append((rdata.preference, rdata.exchange.to_text()))
                else:
                    records.append(rdata.to_text())
        return Answer(dns.rcode.to_text(response.rcode()), bool(response.flags & dns.flags.AA),
                      bool(response.flags & dns.flags.RA), records)

    return query
