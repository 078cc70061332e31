"""remap_queue_owners: a queue from a node whose Postfix has other IDs gets this node's IDs."""

import os

import pytest

import postfix_queue as pq

# Numeric IDs of "the other node" and of "this node" (no names needed: the function maps numbers).
OLD_UID, OLD_GID, OLD_DROP = 2101, 2102, 2103
NEW_UID, NEW_GID, NEW_DROP = 3101, 3102, 3103


def make_queue(top):
    for d in ("active", "deferred/A", "defer/A", "maildrop", "public", "private", "pid"):
        (top / d).mkdir(parents=True)
    owners = {
        "active": (OLD_UID, 0), "deferred": (OLD_UID, 0), "deferred/A": (OLD_UID, 0), "defer": (OLD_UID, 0),
        "defer/A": (OLD_UID, 0), "maildrop": (OLD_UID, OLD_DROP), "public": (OLD_UID, OLD_DROP),
        "private": (OLD_UID, 0), "pid": (0, 0),
    }
    files = {
        "deferred/A/A1B2C3": (OLD_UID, OLD_GID), "defer/A/A1B2C3": (OLD_UID, OLD_GID),
        "maildrop/D4E5F6": (1000, OLD_DROP), "pid/master.pid": (0, 0),
    }
    for name, ids in files.items():
        (top / name).write_text("x")
    for name, (uid, gid) in {**owners, **files}.items():
        os.chown(top / name, uid, gid)
    return top


@pytest.fixture
def queue(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    return make_queue(tmp_path / "spool")


def ids(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def test_other_nodes_ids_become_this_nodes(queue):
    report = pq.remap_queue_owners(str(queue), NEW_UID, NEW_GID, NEW_DROP)
    assert report["previous"] == {"mail_owner_uid": OLD_UID, "mail_owner_gid": OLD_GID, "setgid_gid": OLD_DROP}
    assert ids(queue / "deferred/A/A1B2C3") == (NEW_UID, NEW_GID)
    assert ids(queue / "defer/A/A1B2C3") == (NEW_UID, NEW_GID)
    assert ids(queue / "active") == (NEW_UID, 0)
    assert ids(queue / "public") == (NEW_UID, NEW_DROP)
    # A local user's maildrop file keeps its owner; only the postdrop group is mapped.
    assert ids(queue / "maildrop/D4E5F6") == (1000, NEW_DROP)
    assert ids(queue / "pid/master.pid") == (0, 0)
    assert report["changed"] == 11
    # A second pass finds nothing left to change.
    assert pq.remap_queue_owners(str(queue), NEW_UID, NEW_GID, NEW_DROP)["changed"] == 0


def test_dry_run_changes_nothing(queue):
    report = pq.remap_queue_owners(str(queue), NEW_UID, NEW_GID, NEW_DROP, dry_run=True)
    assert report["changed"] == 11 and report["dry_run"]
    assert ids(queue / "deferred/A/A1B2C3") == (OLD_UID, OLD_GID)


def test_swapped_ids_are_mapped_in_one_pass(queue):
    # This node's postfix gid is the other node's postdrop gid and the reverse: a two-step chown
    # would merge them; one pass keeps them apart.
    report = pq.remap_queue_owners(str(queue), OLD_UID, OLD_DROP, OLD_GID)
    assert report["gid_map"] == {OLD_DROP: OLD_GID, OLD_GID: OLD_DROP}
    assert ids(queue / "deferred/A/A1B2C3") == (OLD_UID, OLD_DROP)
    assert ids(queue / "public") == (OLD_UID, OLD_GID)


def test_same_ids_change_nothing(queue):
    report = pq.remap_queue_owners(str(queue), OLD_UID, OLD_GID, OLD_DROP)
    assert report["changed"] == 0 and report["uid_map"] == {} and report["gid_map"] == {}
