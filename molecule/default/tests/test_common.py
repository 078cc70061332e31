"""The common baseline, checked the way an operator would on the node."""


def test_baseline_packages_installed(host):
    for name in ("ca-certificates", "tzdata", "procps", "iproute2", "lsof", "python3-apt"):
        assert host.package(name).is_installed, name


def test_clock_is_utc(host):
    assert host.file("/etc/localtime").linked_to == "/usr/share/zoneinfo/Etc/UTC"
    assert host.check_output("date +%Z") == "UTC"


def test_journal_is_persistent(host):
    # journald writes into /var/log/journal/<machine-id>/ only when storage is persistent.
    machine_id = host.file("/etc/machine-id").content_string.strip()
    journal = host.file(f"/var/log/journal/{machine_id}")
    assert journal.is_directory
    assert host.run("ls /var/log/journal/%s/system.journal", machine_id).rc == 0
    conf = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert "Storage=persistent" in conf
    assert "RateLimitBurst=100000" in conf


def test_journal_receives_messages(host):
    host.check_output("logger -t durable-mx-test baseline-check")
    host.check_output("journalctl --sync || true")
    out = host.check_output("journalctl -t durable-mx-test --no-pager -o cat")
    assert "baseline-check" in out


def test_kernel_parameters_file(host):
    conf = host.file("/etc/sysctl.d/60-durable-mx.conf")
    assert conf.mode == 0o644
    assert "net.core.somaxconn = 1024" in conf.content_string
    # The file must be loadable by sysctl's parser (ignoring the read-only /proc/sys in containers).
    assert "Invalid" not in host.run("sysctl -p /etc/sysctl.d/60-durable-mx.conf 2>&1").stdout
