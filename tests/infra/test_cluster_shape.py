"""The shape the cluster needs, read from the modules: several ingest nodes rolled one by one,
the origin ALB in front of the tier (not the nodes), a private, encrypted PostgreSQL that only
the nodes and the tier reach, and its URL in a secret."""

from __future__ import annotations

from typing import Any

from tests.infra.conftest import MODULES, blocks, parse, resources, unquote


def _one(module: str, rtype: str) -> dict[str, Any]:
    (body,) = resources(parse(MODULES / module / "main.tf"), rtype).values()
    return body


def _variable(module: str, name: str) -> dict[str, Any]:
    return blocks(parse(MODULES / module / "variables.tf"), "variable")[name]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_ingest_runs_several_nodes_rolled_one_by_one() -> None:
    service = _one("origin", "aws_ecs_service")
    assert unquote(service["desired_count"]) == "${var.ingest_count}"
    assert service["deployment_minimum_healthy_percent"] == 50
    assert service["deployment_maximum_percent"] == 200
    count = _variable("origin", "ingest_count")
    assert count["default"] >= 2 and count.get("validation")
    assert _variable("origin", "stop_timeout_seconds")["default"] >= 30
    # Cluster mode needs the shared database: no default (no SQLite on a task's disk).
    assert "default" not in _variable("origin", "database_url_secret_arn")


def test_ingest_nodes_are_behind_the_control_alb_and_the_nlb_only() -> None:
    service = _one("origin", "aws_ecs_service")
    groups = {unquote(lb["target_group_arn"]) for lb in _list(service["load_balancer"])}
    assert groups == {"${aws_lb_target_group.control.arn}", "${aws_lb_target_group.rtmp.arn}"}
    lbs = resources(parse(MODULES / "origin" / "main.tf"), "aws_lb")
    assert all(lb["internal"] is False for lb in lbs.values()), "no internal origin ALB here"
    assert service.get("service_registries"), "the nodes are registered in Cloud Map"
    assert _one("origin", "aws_service_discovery_private_dns_namespace")


def test_the_origin_alb_fronts_the_tier() -> None:
    lb = _one("tier", "aws_lb")
    assert lb["internal"] is True
    service = _one("tier", "aws_ecs_service")
    (target,) = _list(service["load_balancer"])
    assert unquote(target["target_group_arn"]) == "${aws_lb_target_group.this.arn}"
    assert target["container_port"] == "${local.origin_port}"
    scaling = _one("tier", "aws_appautoscaling_target")
    assert unquote(scaling["min_capacity"]) == "${var.min_count}"
    assert unquote(scaling["max_capacity"]) == "${var.max_count}"
    policy = _one("tier", "aws_appautoscaling_policy")
    spec = _list(policy["target_tracking_scaling_policy_configuration"])[0]
    metric = _list(spec["predefined_metric_specification"])[0]
    assert unquote(metric["predefined_metric_type"]) == "ECSServiceAverageCPUUtilization"


def test_database_is_private_encrypted_postgres() -> None:
    db = _one("database", "aws_db_instance")
    assert unquote(db["engine"]) == "postgres"
    assert db["storage_encrypted"] is True
    assert db["publicly_accessible"] is False
    assert unquote(db["multi_az"]) == "${var.multi_az}"
    assert _variable("database", "multi_az")["default"] is True
    assert unquote(db["deletion_protection"]) == "${var.deletion_protection}"
    assert int(unquote(_variable("database", "engine_version")["default"]).split(".")[0]) >= 15
    # Only the given security groups get in, never an address range.
    rules = resources(parse(MODULES / "database" / "main.tf"), "aws_vpc_security_group_ingress_rule")
    assert rules and all("referenced_security_group_id" in r and "cidr_ipv4" not in r
                         for r in rules.values())
    params = {unquote(p["name"]): unquote(p["value"])
              for p in _list(_one("database", "aws_db_parameter_group")["parameter"])}
    assert params["rds.force_ssl"] == "1"


def test_database_url_secret_is_the_whole_url() -> None:
    main = parse(MODULES / "database" / "main.tf")
    url = next(unquote(item["database_url"]) for item in main["locals"] if "database_url" in item)
    assert url.startswith("postgresql://${var.username}:${random_password.master.result}@")
    assert url.endswith(":${aws_db_instance.this.port}/${var.database_name}")
    version = _one("database", "aws_secretsmanager_secret_version")
    assert unquote(version["secret_string"]) == "${local.database_url}"
    out = blocks(parse(MODULES / "database" / "outputs.tf"), "output")["database_url_secret_arn"]
    # The version's ARN (the secret's), so that services wait for a value to exist.
    assert unquote(out["value"]) == "${aws_secretsmanager_secret_version.url.arn}"
