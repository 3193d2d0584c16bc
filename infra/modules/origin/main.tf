# The ingest nodes: `townsquare ingest` tasks in cluster mode. Each runs the control API
# (8000: rooms API, WHIP, broadcaster page), the RTMP server (1935), the packagers of the
# rooms it holds the lease of, and its own origin (8001), which the origin tier (the tier
# module) forwards live requests to. Rooms move between nodes by leases kept in the rooms
# database: a stopping node hands its rooms over, a dead node's rooms are adopted by
# another once their lease has run out.

data "aws_region" "current" {}

locals {
  # Ports are the services' defaults, passed explicitly so that the task definition,
  # target groups and the process agree (tests/infra pins them to the settings classes).
  control_port = 8000
  origin_port  = 8001
  rtmp_port    = 1935

  container_name = "townsquare"
  create_token   = var.admin_token_parameter_arn == null
  admin_token_arn = (
    local.create_token ? aws_ssm_parameter.admin_token[0].arn : var.admin_token_parameter_arn
  )

  # Every key is a field of ingest.settings.IngestSettings (TOWNSQUARE_ + field name);
  # tests/infra/test_settings_drift.py fails the build when one is not. Null values are
  # left out so the service keeps its own default.
  container_environment = {
    TOWNSQUARE_HOST                 = "0.0.0.0"
    TOWNSQUARE_CONTROL_PORT         = local.control_port
    TOWNSQUARE_RTMP_PORT            = local.rtmp_port
    TOWNSQUARE_ORIGIN_PORT          = local.origin_port
    TOWNSQUARE_DATA_DIR             = "/data"
    TOWNSQUARE_S3_BUCKET            = var.s3_bucket
    TOWNSQUARE_S3_PREFIX            = var.s3_key_prefix
    TOWNSQUARE_S3_REGION            = data.aws_region.current.name
    TOWNSQUARE_PUBLIC_CONTROL_URL   = coalesce(var.public_control_url, "https://${aws_lb.control.dns_name}")
    TOWNSQUARE_PUBLIC_RTMP_URL      = coalesce(var.public_rtmp_url, "rtmp://${aws_lb.rtmp.dns_name}:${local.rtmp_port}")
    TOWNSQUARE_PUBLIC_EDGE_URL      = var.public_edge_url
    TOWNSQUARE_LADDER               = var.ladder
    TOWNSQUARE_IDLE_TIMEOUT_SECONDS = var.idle_timeout_seconds
    TOWNSQUARE_LEASE_SECONDS        = var.lease_seconds
    TOWNSQUARE_NODE_CAPACITY        = var.node_capacity
    # Each node's origin reads live state in-process and the tier forwards live requests to
    # it: nobody follows state.json, so it is not written (~13 PUTs/s a room saved).
    TOWNSQUARE_PUBLISH_STATE = false
    # Fargate's public IP is a 1:1 NAT the task cannot see: STUN finds it for ICE.
    TOWNSQUARE_WHIP_ICE_SERVERS  = var.assign_public_ip ? var.whip_ice_servers : null
    TOWNSQUARE_WHIP_ICE_LOOPBACK = false
  }

  # Null values are left out, as above.
  container_secrets = {
    # The nodes share it: any node's API accepts it.
    TOWNSQUARE_ADMIN_TOKEN = local.admin_token_arn
    # The rooms database every node and the tier share (PostgreSQL): rooms, key hashes,
    # epochs, the node directory and the room leases.
    TOWNSQUARE_DATABASE_URL = var.database_url_secret_arn
  }

  # Set per task at container start (a task definition has no per-task values), then the
  # process becomes `townsquare <command>`; values already in the environment win:
  #   TOWNSQUARE_NODE_ID       the ECS task id (unique per task, never reused);
  #   TOWNSQUARE_INTERNAL_URL  http://<the task's private IP>:<origin port>, where the
  #                            origin tier reaches this node's origin.
  # Both are read from the ECS task metadata endpoint (v4), else from the hostname.
  entrypoint = <<-EOT
    import json, os, socket, sys, urllib.request
    task = {}
    try:
        url = os.environ["ECS_CONTAINER_METADATA_URI_V4"] + "/task"
        with urllib.request.urlopen(url, timeout=5) as answer:
            task = json.load(answer)
    except Exception as exc:
        print(f"ECS task metadata unavailable ({exc!r}); using the hostname", file=sys.stderr)
    ips = [a for c in task.get("Containers", []) for n in c.get("Networks", [])
           for a in n.get("IPv4Addresses", [])]
    ip = ips[0] if ips else socket.gethostbyname(socket.gethostname())
    node = task.get("TaskARN", socket.gethostname()).rsplit("/", 1)[-1]
    os.environ.setdefault("TOWNSQUARE_NODE_ID", node)
    os.environ.setdefault("TOWNSQUARE_INTERNAL_URL", f"http://{ip}:${local.origin_port}")
    print("node", os.environ["TOWNSQUARE_NODE_ID"], "at", os.environ["TOWNSQUARE_INTERNAL_URL"], file=sys.stderr)
    os.execvp("townsquare", ["townsquare", *sys.argv[1:]])
  EOT

  healthcheck = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${local.control_port}/healthz', timeout=3)"
}

################################################################################
# Admin token
################################################################################

resource "random_password" "admin_token" {
  count   = local.create_token ? 1 : 0
  length  = 48
  special = false
}

resource "aws_ssm_parameter" "admin_token" {
  count       = local.create_token ? 1 : 0
  name        = "/${var.name}/admin-token"
  description = "townsquare rooms API admin token (TOWNSQUARE_ADMIN_TOKEN)."
  type        = "SecureString"
  key_id      = var.secrets_kms_key_arn
  value       = random_password.admin_token[0].result
  tags        = var.tags

  # Rotation happens out of band (`aws ssm put-parameter --overwrite`); see infra/README.md.
  lifecycle {
    ignore_changes = [value]
  }
}

################################################################################
# Logs and IAM
################################################################################

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_338:Operational logs of a stateless stream service; retention is var.log_retention_days (30 by default) to bound cost.
  #checkov:skip=CKV_AWS_158:KMS for logs is optional (var.log_kms_key_arn); CloudWatch encrypts at rest by default.
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = var.tags
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name_prefix        = "${var.name}-exec-"
  description        = "Pulls the image, writes logs and reads the admin token and database URL for ${var.name}."
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "read_admin_token" {
  statement {
    sid       = "ReadSecrets"
    actions   = ["ssm:GetParameters", "secretsmanager:GetSecretValue"]
    resources = [local.admin_token_arn, var.database_url_secret_arn]
  }

  dynamic "statement" {
    for_each = var.secrets_kms_key_arn == null ? [] : [var.secrets_kms_key_arn]
    content {
      sid       = "DecryptSecrets"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "read_admin_token" {
  name   = "read-admin-token"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.read_admin_token.json
}

resource "aws_iam_role" "task" {
  name_prefix        = "${var.name}-task-"
  description        = "What the townsquare ingest process itself may do: write the bucket."
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "task_s3_writer" {
  role       = aws_iam_role.task.name
  policy_arn = var.s3_writer_policy_arn
}

################################################################################
# Security groups
################################################################################

resource "aws_security_group" "control_alb" {
  name_prefix = "${var.name}-control-alb-"
  description = "townsquare control API load balancer"
  vpc_id      = var.vpc_id
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "control_alb_https" {
  for_each          = toset(var.control_ingress_cidr_blocks)
  security_group_id = aws_security_group.control_alb.id
  description       = "HTTPS: rooms API, WHIP, broadcaster page"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "control_alb_http" {
  #checkov:skip=CKV_AWS_260:Port 80 only answers with a redirect to HTTPS.
  for_each          = toset(var.control_ingress_cidr_blocks)
  security_group_id = aws_security_group.control_alb.id
  description       = "HTTP, redirected to HTTPS"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "control_alb_to_task" {
  security_group_id            = aws_security_group.control_alb.id
  description                  = "To the control API"
  ip_protocol                  = "tcp"
  from_port                    = local.control_port
  to_port                      = local.control_port
  referenced_security_group_id = aws_security_group.task.id
}

resource "aws_security_group" "rtmp_nlb" {
  name_prefix = "${var.name}-rtmp-nlb-"
  description = "townsquare RTMP network load balancer"
  vpc_id      = var.vpc_id
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "rtmp_nlb" {
  for_each          = toset(var.rtmp_ingress_cidr_blocks)
  security_group_id = aws_security_group.rtmp_nlb.id
  description       = "RTMP from broadcasters"
  ip_protocol       = "tcp"
  from_port         = local.rtmp_port
  to_port           = local.rtmp_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "rtmp_nlb_to_task" {
  for_each                     = toset([tostring(local.rtmp_port), tostring(local.control_port)])
  security_group_id            = aws_security_group.rtmp_nlb.id
  description                  = "To RTMP and the health check"
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.value)
  to_port                      = tonumber(each.value)
  referenced_security_group_id = aws_security_group.task.id
}

resource "aws_security_group" "task" {
  name_prefix = "${var.name}-task-"
  description = "townsquare ingest nodes"
  vpc_id      = var.vpc_id
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "task_control" {
  for_each = {
    control_alb = aws_security_group.control_alb.id
    rtmp_nlb    = aws_security_group.rtmp_nlb.id
  }
  security_group_id            = aws_security_group.task.id
  description                  = "Control API and health checks from ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = local.control_port
  to_port                      = local.control_port
  referenced_security_group_id = each.value
}

resource "aws_vpc_security_group_ingress_rule" "task_origin" {
  for_each                     = var.origin_client_security_group_ids
  security_group_id            = aws_security_group.task.id
  description                  = "Origin HTTP (8001) from ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = local.origin_port
  to_port                      = local.origin_port
  referenced_security_group_id = each.value
}

# Node to node, inside the VPC: every node may reach the others' control API (relayed
# speakers, forwarded "end room") and origin.
resource "aws_vpc_security_group_ingress_rule" "task_nodes" {
  for_each = {
    control = local.control_port
    origin  = local.origin_port
  }
  security_group_id            = aws_security_group.task.id
  description                  = "${each.key} port from the other ingest nodes"
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
  referenced_security_group_id = aws_security_group.task.id
}

resource "aws_vpc_security_group_ingress_rule" "task_rtmp" {
  security_group_id            = aws_security_group.task.id
  description                  = "RTMP from the NLB"
  ip_protocol                  = "tcp"
  from_port                    = local.rtmp_port
  to_port                      = local.rtmp_port
  referenced_security_group_id = aws_security_group.rtmp_nlb.id
}

resource "aws_vpc_security_group_ingress_rule" "task_whip_media" {
  count             = var.assign_public_ip ? 1 : 0
  security_group_id = aws_security_group.task.id
  description       = "WebRTC (WHIP) media: ICE/DTLS/SRTP over UDP from browsers"
  ip_protocol       = "udp"
  from_port         = var.whip_udp_port_range.from
  to_port           = var.whip_udp_port_range.to
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "task" {
  #checkov:skip=CKV_AWS_382:The nodes reach S3, ECR, SSM, Secrets Manager, CloudWatch and STUN/WebRTC peers on the internet, and the database and each other in the VPC; narrowing needs VPC endpoints the operator may add.
  security_group_id = aws_security_group.task.id
  description       = "S3, ECR, SSM, Secrets Manager, logs, STUN, WebRTC peers, the database, other nodes"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

################################################################################
# Load balancers
################################################################################

resource "aws_lb" "control" {
  #checkov:skip=CKV2_AWS_28:A WAF is the operator's choice; attach one with aws_wafv2_web_acl_association to control_lb_arn.
  #checkov:skip=CKV_AWS_91:Access logs are optional (var.access_logs_bucket).
  name_prefix                = "tsctl-"
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = var.public_subnet_ids
  security_groups            = [aws_security_group.control_alb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  # HTTP/2 to browsers is the ALB's; the task speaks HTTP/1.1 behind it.
  enable_http2 = true
  idle_timeout = 60
  tags         = merge(var.tags, { Name = "${var.name}-control" })

  dynamic "access_logs" {
    for_each = var.access_logs_bucket == null ? [] : [var.access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = "${var.name}/control"
      enabled = true
    }
  }
}

resource "aws_lb_target_group" "control" {
  #checkov:skip=CKV_AWS_378:TLS ends at the ALB; the hop to the task stays inside the VPC.
  name_prefix          = "tsctl-"
  port                 = local.control_port
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  tags                 = var.tags

  health_check {
    path                = "/healthz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_lb_listener" "control_https" {
  load_balancer_arn = aws_lb.control.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.ssl_policy
  certificate_arn   = var.certificate_arn
  tags              = var.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.control.arn
  }
}

# Prometheus is scraped from inside the VPC (task IP:8000/metrics), never through the public ALB.
resource "aws_lb_listener_rule" "hide_metrics" {
  listener_arn = aws_lb_listener.control_https.arn
  priority     = 1
  tags         = var.tags

  condition {
    path_pattern {
      values = ["/metrics", "/metrics/*"]
    }
  }

  action {
    type = "fixed-response"

    fixed_response {
      content_type = "text/plain"
      message_body = "not found"
      status_code  = "404"
    }
  }
}

resource "aws_lb_listener" "control_http" {
  load_balancer_arn = aws_lb.control.arn
  port              = 80
  protocol          = "HTTP"
  tags              = var.tags

  default_action {
    type = "redirect"

    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }
}

resource "aws_lb" "rtmp" {
  #checkov:skip=CKV_AWS_91:Access logs are optional (var.access_logs_bucket).
  name_prefix                      = "tsrtm-"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = var.public_subnet_ids
  security_groups                  = [aws_security_group.rtmp_nlb.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.deletion_protection
  tags                             = merge(var.tags, { Name = "${var.name}-rtmp" })

  dynamic "access_logs" {
    for_each = var.access_logs_bucket == null ? [] : [var.access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = "${var.name}/rtmp"
      enabled = true
    }
  }
}

# Each new RTMP connection goes to one node, picked by the NLB's flow hash over the healthy
# nodes of every zone (cross-zone on); no stickiness. A deregistered node keeps the
# connections it has until it stops and hands its rooms over.
resource "aws_lb_target_group" "rtmp" {
  name_prefix          = "tsrtm-"
  port                 = local.rtmp_port
  protocol             = "TCP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  tags                 = var.tags

  # The RTMP port has no health endpoint; the control port's /healthz speaks for the process.
  health_check {
    protocol            = "HTTP"
    port                = tostring(local.control_port)
    path                = "/healthz"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_lb_listener" "rtmp" {
  load_balancer_arn = aws_lb.rtmp.arn
  port              = local.rtmp_port
  protocol          = "TCP"
  tags              = var.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.rtmp.arn
  }
}

################################################################################
# Service discovery: every running node under one private DNS name
################################################################################

resource "aws_service_discovery_private_dns_namespace" "this" {
  name        = coalesce(var.service_discovery_namespace_name, "${var.name}.internal")
  description = "townsquare ${var.name}: ingest nodes inside the VPC"
  vpc         = var.vpc_id
  tags        = var.tags
}

# <service_discovery_name>.<namespace> answers with the private IP of every running node
# (A records, multivalue): node to node links, Prometheus DNS discovery, operators.
resource "aws_service_discovery_service" "this" {
  name = var.service_discovery_name
  tags = var.tags

  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.this.id
    routing_policy = "MULTIVALUE"

    dns_records {
      type = "A"
      ttl  = 10
    }
  }

  # ECS reports each task's health: a node stops being listed as soon as it stops.
  health_check_custom_config {}
}

################################################################################
# Task and service
################################################################################

resource "aws_ecs_task_definition" "this" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  tags                     = var.tags

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  # Writable scratch on the task's ephemeral storage; the root filesystem stays read-only.
  volume {
    name = "data"
  }

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([
    {
      name      = local.container_name
      image     = var.image
      essential = true
      # `python -c local.entrypoint ingest`: the node's identity, then `townsquare ingest`.
      entryPoint             = ["python", "-c", local.entrypoint]
      command                = ["ingest"]
      readonlyRootFilesystem = true
      # A tiny init as PID 1 forwards SIGTERM and reaps children.
      linuxParameters = { initProcessEnabled = true }
      # SIGTERM makes the node hand its rooms over: stop them, let the store and the
      # database take where each stopped (up to store_drain_seconds each, 10 s by default),
      # release the leases. SIGKILL comes after this many seconds.
      stopTimeout = var.stop_timeout_seconds

      portMappings = [
        { containerPort = local.control_port, protocol = "tcp" },
        { containerPort = local.origin_port, protocol = "tcp" },
        { containerPort = local.rtmp_port, protocol = "tcp" },
      ]

      environment = [
        for k, v in local.container_environment : { name = k, value = tostring(v) } if v != null
      ]
      secrets = [
        for k, v in local.container_secrets : { name = k, valueFrom = v } if v != null
      ]

      mountPoints = [
        { sourceVolume = "data", containerPath = "/data", readOnly = false },
        { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
      ]

      healthCheck = {
        command     = ["CMD", "python", "-c", local.healthcheck]
        interval    = 10
        timeout     = 5
        retries     = 3
        startPeriod = 20
      }

      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.this.name
          awslogs-region        = data.aws_region.current.name
          awslogs-stream-prefix = "ingest"
        }
      }
    }
  ])
}

resource "aws_ecs_service" "this" {
  #checkov:skip=CKV_AWS_333:WHIP media is WebRTC over UDP straight to the task, which needs a public IP (var.assign_public_ip); no load balancer carries ICE.
  name                              = var.name
  cluster                           = var.cluster_arn
  task_definition                   = aws_ecs_task_definition.this.arn
  launch_type                       = "FARGATE"
  platform_version                  = "LATEST"
  propagate_tags                    = "SERVICE"
  health_check_grace_period_seconds = 30
  enable_execute_command            = false
  wait_for_steady_state             = false
  # Rolling: new nodes start (up to twice the count) and old ones stop, at least half the
  # count staying healthy; each stopping node hands its rooms over to the nodes running.
  desired_count                      = var.ingest_count
  deployment_minimum_healthy_percent = 50
  deployment_maximum_percent         = 200
  tags                               = var.tags

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.assign_public_ip ? var.public_subnet_ids : var.private_subnet_ids
    security_groups  = [aws_security_group.task.id]
    assign_public_ip = var.assign_public_ip
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.control.arn
    container_name   = local.container_name
    container_port   = local.control_port
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.rtmp.arn
    container_name   = local.container_name
    container_port   = local.rtmp_port
  }

  service_registries {
    registry_arn = aws_service_discovery_service.this.arn
  }

  depends_on = [
    aws_lb_listener.control_https,
    aws_lb_listener.rtmp,
  ]
}
