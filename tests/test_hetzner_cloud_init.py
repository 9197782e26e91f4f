"""The user-data fleet servers boot with: valid cloud-config joining over TLS, no secret but the worker's."""

from __future__ import annotations

import pytest
import yaml
from dask_peers import make_tls

from cah_resources.fleet.cloud_init import UserDataError, render_cloud_init

PACKAGE = "cah @ git+https://github.com/example/cah@0123abc"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("tls"))


def test_user_data_starts_a_worker_joined_over_tls_with_only_worker_credentials(tls):
    text = render_cloud_init(
        "tls://198.51.100.7:8786", fleet="crawl", package=PACKAGE, tls_dir=str(tls), extra_packages=("s3fs>=2024.6",)
    )

    config = yaml.safe_load(text)
    files = {f["path"]: f for f in config["write_files"]}
    assert sorted(files) == [
        "/etc/cah/tls/ca.pem",
        "/etc/cah/tls/worker-key.pem",
        "/etc/cah/tls/worker.pem",
        "/etc/systemd/system/cah-worker.service",
    ]
    service = files["/etc/systemd/system/cah-worker.service"]["content"]
    assert (
        "ExecStart=/opt/cah/venv/bin/cah worker --scheduler tls://198.51.100.7:8786 --name %H --nthreads 1 "
        "--tls-ca-file /etc/cah/tls/ca.pem --tls-cert /etc/cah/tls/worker.pem --tls-key /etc/cah/tls/worker-key.pem"
    ) in service
    assert config["runcmd"][2] == ["/opt/cah/venv/bin/pip", "install", "--quiet", PACKAGE, "s3fs>=2024.6"]
    assert ["systemctl", "enable", "--now", "cah-worker.service"] in config["runcmd"]
    assert (tls / "ca-key.pem").read_text().strip() not in text
    assert (tls / "client-key.pem").read_text().strip() not in text
    assert text.count("PRIVATE KEY-----") == 2  # BEGIN and END of worker-key.pem only


def test_plain_tcp_is_refused_unless_the_scheduler_is_on_a_private_network():
    with pytest.raises(UserDataError, match="must join over tls://"):
        render_cloud_init("tcp://198.51.100.7:8786", fleet="crawl", package=PACKAGE)

    text = render_cloud_init("tcp://10.0.0.2:8786", fleet="crawl", package=PACKAGE)
    assert "--scheduler tcp://10.0.0.2:8786" in text and "/etc/cah/tls" not in text


@pytest.mark.parametrize("address", ["tls://host:8786\nruncmd: [[rm, -rf, /]]", "http://host:8786", "tls://host"])
def test_a_malformed_scheduler_address_cannot_reach_the_template(address, tls):
    with pytest.raises(UserDataError, match="is not like tls://"):
        render_cloud_init(address, fleet="crawl", package=PACKAGE, tls_dir=str(tls))


def test_a_package_that_would_break_the_yaml_is_refused(tls):
    with pytest.raises(UserDataError, match="must be one pip requirement"):
        render_cloud_init("tls://198.51.100.7:8786", fleet="crawl", package='cah"]\n- [reboot', tls_dir=str(tls))


def test_missing_certificates_are_named_in_one_line(tmp_path):
    with pytest.raises(
        UserDataError, match=r"ca\.pem is missing; make the cluster's certificates with deploy/make_tls.sh"
    ):
        render_cloud_init("tls://198.51.100.7:8786", fleet="crawl", package=PACKAGE, tls_dir=str(tmp_path))
