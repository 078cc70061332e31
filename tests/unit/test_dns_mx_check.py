"""dns_mx_check: the published MX set against the inventory, with fake name servers (no network)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rrset
import pytest

import dns_mx
from dns_mx import Answer, check_domain, dnspython_query

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "durable-mx.test"
VIP = {"name": "mx.durable-mx.test", "address": "10.89.201.250"}
EXPECTED = [
    {"preference": 10, "exchange": "mx.durable-mx.test.", "addresses": ["10.89.201.250"]},
    {"preference": 20, "exchange": "backup.lab.durable-mx.test", "addresses": ["10.89.201.13"]},
]


def zone(changes=None):
    """The lab zone as a name server would serve it, with some records changed."""
    data = {
        (DOMAIN, "MX"): [(10, "mx.durable-mx.test."), (20, "backup.lab.durable-mx.test.")],
        ("mx.durable-mx.test", "A"): ["10.89.201.250"],
        ("backup.lab.durable-mx.test", "A"): ["10.89.201.13"],
    }
    data.update(changes or {})
    return data


def fake_server(data, authoritative=True, recursion=False, rcode="NOERROR"):
    asked = []

    def query(name, rdtype):
        asked.append((name, rdtype))
        records = data.get((name, rdtype))
        if records is None:
            return Answer("NXDOMAIN" if rcode == "NOERROR" else rcode, authoritative, recursion, [])
        return Answer(rcode, authoritative, recursion, list(records))

    query.asked = asked
    return query


def kinds(result):
    return sorted(d["kind"] for d in result["drift"])


def test_in_sync_reports_nothing_and_publishes_what_it_saw():
    result = check_domain(fake_server(zone()), DOMAIN, EXPECTED, VIP)
    assert result["drift"] == []
    assert result["published"]["mx"] == [{"preference": 10, "exchange": "mx.durable-mx.test"},
                                         {"preference": 20, "exchange": "backup.lab.durable-mx.test"}]
    assert result["published"]["addresses"]["backup.lab.durable-mx.test"] == ["10.89.201.13"]


def test_names_compare_without_case_or_final_dot():
    data = zone({(DOMAIN, "MX"): [(10, "MX.Durable-MX.test."), (20, "backup.lab.durable-mx.test")]})
    assert check_domain(fake_server(data), DOMAIN.upper() + ".", EXPECTED, VIP)["drift"] == []


def test_changed_preference_is_one_drift_not_missing_plus_unexpected():
    data = zone({(DOMAIN, "MX"): [(10, "mx.durable-mx.test."), (5, "backup.lab.durable-mx.test.")]})
    result = check_domain(fake_server(data), DOMAIN, EXPECTED, VIP)
    # The backup now comes first: a preference drift, and the VIP is no longer tried first.
    assert kinds(result) == ["mx_preference", "vip"]
    pref = next(d for d in result["drift"] if d["kind"] == "mx_preference")
    assert (pref["name"], pref["expected"], pref["found"]) == ("backup.lab.durable-mx.test", 20, 5)


def test_missing_and_unexpected_exchanges():
    data = zone({(DOMAIN, "MX"): [(10, "mx.durable-mx.test."), (30, "rogue.example.test.")]})
    result = check_domain(fake_server(data), DOMAIN, EXPECTED, VIP)
    assert kinds(result) == ["mx_missing", "mx_unexpected"]
    # The unexpected exchange's addresses are looked up and published, not compared.
    assert result["published"]["addresses"]["rogue.example.test"] == []
    missing = next(d for d in result["drift"] if d["kind"] == "mx_missing")
    assert missing["name"] == "backup.lab.durable-mx.test" and "not published" in missing["message"]


def test_changed_address_of_an_exchange():
    data = zone({("backup.lab.durable-mx.test", "A"): ["10.89.201.99"]})
    result = check_domain(fake_server(data), DOMAIN, EXPECTED, VIP)
    assert kinds(result) == ["address"]
    assert result["drift"][0]["found"] == ["10.89.201.99"]
    assert result["drift"][0]["expected"] == ["10.89.201.13"]


def test_vip_name_pointing_elsewhere_is_address_and_vip_drift():
    data = zone({("mx.durable-mx.test", "A"): ["10.89.201.11", "10.89.201.250"]})
    result = check_domain(fake_server(data), DOMAIN, EXPECTED, VIP)
    assert kinds(result) == ["address", "vip"]


def test_vip_checked_even_when_only_given_as_vip():
    expected = [dict(EXPECTED[0], addresses=[]), EXPECTED[1]]
    data = zone({("mx.durable-mx.test", "A"): ["10.89.201.11"]})
    result = check_domain(fake_server(data), DOMAIN, expected, VIP)
    assert kinds(result) == ["vip"]
    assert "expected only the VIP 10.89.201.250" in result["drift"][0]["message"]


def test_unanswered_queries_are_drift_with_the_reason():
    result = check_domain(fake_server(zone(), rcode="REFUSED"), DOMAIN, EXPECTED, VIP)
    assert set(kinds(result)) == {"rcode", "mx_missing"}
    assert any("REFUSED" in d["message"] for d in result["drift"])


def test_non_authoritative_or_recursive_server_is_reported_once():
    result = check_domain(fake_server(zone(), authoritative=False, recursion=True), DOMAIN, EXPECTED, VIP)
    assert kinds(result) == ["not_authoritative", "recursion_available"]


def test_every_exchange_and_the_vip_name_are_looked_up_once():
    server = fake_server(zone())
    check_domain(server, DOMAIN, EXPECTED, VIP)
    assert sorted(server.asked) == sorted([(DOMAIN, "MX"), ("backup.lab.durable-mx.test", "A"),
                                           ("mx.durable-mx.test", "A")])


# dnspython_query: real dnspython messages, with the network call replaced.

def _respond(request, answers, aa=True, ra=False):
    response = dns.message.make_response(request)
    response.flags |= dns.flags.AA if aa else 0
    if ra:
        response.flags |= dns.flags.RA
    for text in answers:
        response.answer.append(dns.rrset.from_text(*text))
    return response


def test_dnspython_query_parses_mx_and_flags(monkeypatch):
    seen = {}

    def udp(request, where, timeout, port):
        seen.update(where=where, port=port, rd=bool(request.flags & dns.flags.RD))
        return _respond(request, [(DOMAIN + ".", 60, "IN", "MX", "10 mx.durable-mx.test.", "20 backup.lab.durable-mx.test.")])

    monkeypatch.setattr(dns.query, "udp", udp)
    answer = dnspython_query("10.89.201.10", 5353, 1.0)(DOMAIN, "MX")
    assert seen == {"where": "10.89.201.10", "port": 5353, "rd": False}
    assert answer.rcode == "NOERROR" and answer.authoritative and not answer.recursion_available
    assert sorted(answer.records) == [(10, "mx.durable-mx.test."), (20, "backup.lab.durable-mx.test.")]


def test_dnspython_query_ignores_other_names_and_types(monkeypatch):
    def udp(request, where, timeout, port):
        return _respond(request, [("mx.durable-mx.test.", 60, "IN", "CNAME", "elsewhere.test."),
                                  ("elsewhere.test.", 60, "IN", "A", "10.0.0.1")], ra=True)

    monkeypatch.setattr(dns.query, "udp", udp)
    answer = dnspython_query("10.89.201.10")("mx.durable-mx.test", "A")
    assert answer.records == [] and answer.recursion_available


def test_dnspython_query_retries_truncated_answers_over_tcp(monkeypatch):
    def udp(request, where, timeout, port):
        response = _respond(request, [])
        response.flags |= dns.flags.TC
        return response

    def tcp(request, where, timeout, port):
        return _respond(request, [("mx.durable-mx.test.", 60, "IN", "A", "10.89.201.250")])

    monkeypatch.setattr(dns.query, "udp", udp)
    monkeypatch.setattr(dns.query, "tcp", tcp)
    assert dnspython_query("10.89.201.10")("mx.durable-mx.test", "A").records == ["10.89.201.250"]


def test_dnspython_query_timeout_is_an_answer_not_an_exception(monkeypatch):
    def udp(request, where, timeout, port):
        raise dns.exception.Timeout()

    monkeypatch.setattr(dns.query, "udp", udp)
    answer = dnspython_query("10.89.201.10", timeout=0.5)(DOMAIN, "MX")
    assert answer.rcode == "TIMEOUT" and "10.89.201.10:53" in answer.detail


# The module's run(): one check per name server, drift tagged with the server.

def _load_module():
    sys.modules.setdefault("ansible.module_utils.dns_mx", dns_mx)
    spec = importlib.util.spec_from_file_location("dns_mx_check", ROOT / "plugins" / "modules" / "dns_mx_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def module():
    return _load_module()


def _params(**changes):
    params = {"domain": DOMAIN, "nameservers": ["10.89.201.10", "10.89.201.14"], "port": 53, "timeout": 1.0,
              "expected_mx": EXPECTED, "vip": VIP, "fail_on_drift": False}
    params.update(changes)
    return params


def test_module_checks_every_nameserver_and_never_changes_anything(module):
    servers = {"10.89.201.10": fake_server(zone()),
               "10.89.201.14": fake_server(zone({("backup.lab.durable-mx.test", "A"): []}))}
    result = module.run(_params(), make_query=lambda ns, port, timeout: servers[ns])
    assert result["changed"] is False and result["in_sync"] is False
    assert [(d["nameserver"], d["kind"]) for d in result["drift"]] == [("10.89.201.14", "address")]
    assert set(result["published"]) == {"10.89.201.10", "10.89.201.14"}


def test_module_in_sync(module):
    result = module.run(_params(nameservers=["10.89.201.10"]), make_query=lambda ns, port, timeout: fake_server(zone()))
    assert result == {"changed": False, "in_sync": True, "drift": [], "published": result["published"]}
