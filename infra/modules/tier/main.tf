# The origin tier: stateless `townsquare tier` replicas behind the internal origin ALB, the
# upstream of the shield (or of the edges). Each replica forwards live requests (playlists,
# blocking reloads, parts not stored yet) to the ingest node that holds the room's lease,
# found in the rooms database, and serves immutable objects from the bucket. Autoscaled on
# CPU; any replica answers for any room.

data "aws_region" "current" {}

data "aws_vpc" "this" {
  id = var.vpc_id
}

locals {
  # The origin port of TierSettings (and of every ingest node's own origin).
  origin_port    = 8001
  container_name = "townsquare-tier"
  cluster_name   = element(split("/", var.cluster_arn), 1)

  # Keyed by a name known at plan time: a VPC created in the same apply has no CIDR yet.
  ingress_cidr_blocks = (
    var.ingress_cidr_blocks != null ? { for c in var.ingress_cidr_blocks : c => c } : { vpc = data.aws_vpc.this.cidr_block }
  )

  # Every key is a field of packager.settings.TierSettings (TOWNSQUARE_ + field name);
  # tests/infra/test_settings_drift.py fails the build when one is not. Null values are
  # left out so the service keeps its own default.
  container_environment = {
    TOWNSQUARE_HOST                       = "0.0.0.0"
    TOWNSQUARE_ORIGIN_PORT                = local.origin_port
    TOWNSQUARE_DATA_DIR                   = "/data"
    TOWNSQUARE_S3_BUCKET                  = var.s3_bucket
    TOWNSQUARE_S3_PREFIX                  = var.s3_key_prefix
    TOWNSQUARE_S3_REGION                  = data.aws_region.current.name
    TOWNSQUARE_TIER_OWNER_CACHE_SECONDS   = var.owner_cache_seconds
    TOWNSQUARE_TIER_FAILOVER_WAIT_SECONDS = var.failover_wait_seconds
    TOWNSQUARE_TIER_MAX_CONNECTIONS       = var.max_connections
  }

  container_secrets = {
    # Where each room's owner is found (the ingest nodes' leases).
    TOWNSQUARE_DATABASE_URL = var.database_url_secret_arn
  }

  healthcheck = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${local.origin_port}/healthz', timeout=3)"
}

################################################################################
# Logs and IAM
################################################################################

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_338:Operational logs of a stateless origin replica; retention is var.log_retention_days (30 by default) to bound cost.
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
  description        = "Pulls the image, writes logs and reads the database URL for ${var.name}."
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "read_secrets" {
  statement {
    sid       = "ReadDatabaseUrl"
    actions   = ["ssm:GetParameters", "secretsmanager:GetSecretValue"]
    resources = [var.database_url_secret_arn]
  }

  dynamic "statement" {
    for_each = var.secrets_kms_key_arn == null ? [] : [var.secrets_kms_key_arn]
    content {
      sid       = "DecryptDatabaseUrl"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "read_secrets" {
  name   = "read-secrets"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.read_secrets.json
}

resource "aws_iam_role" "task" {
  name_prefix        = "${var.name}-task-"
  description        = "What the townsquare tier process itself may do: read the bucket."
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "task_s3_reader" {
  role       = aws_iam_role.task.name
  policy_arn = var.s3_reader_policy_arn
}

################################################################################
# Security groups
################################################################################

resource "aws_security_group" "lb" {
  name_prefix = "${var.name}-lb-"
  description = "townsquare internal origin load balancer"
  vpc_id      = var.vpc_id
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "lb" {
  for_each          = local.ingress_cidr_blocks
  security_group_id = aws_security_group.lb.id
  description       = "Origin HTTP from edges and shields inside the VPC"
  ip_protocol       = "tcp"
  from_port         = local.origin_port
  to_port           = local.origin_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "lb_to_task" {
  security_group_id            = aws_security_group.lb.id
  description                  = "To the origin tier tasks"
  ip_protocol                  = "tcp"
  from_port                    = local.origin_port
  to_port                      = local.origin_port
  referenced_security_group_id = aws_security_group.task.id
}

resource "aws_security_group" "task" {
  name_prefix = "${var.name}-task-"
  description = "townsquare origin tier tasks"
  vpc_id      = var.vpc_id
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "task" {
  security_group_id            = aws_security_group.task.id
  description                  = "From the internal origin load balancer"
  ip_protocol                  = "tcp"
  from_port                    = local.origin_port
  to_port                      = local.origin_port
  referenced_security_group_id = aws_security_group.lb.id
}

resource "aws_vpc_security_group_egress_rule" "task_vpc" {
  security_group_id = aws_security_group.task.id
  description       = "To the ingest nodes' origins (8001) and the rooms database (5432) inside the VPC"
  ip_protocol       = "tcp"
  from_port         = 0
  to_port           = 65535
  cidr_ipv4         = data.aws_vpc.this.cidr_block
}

resource "aws_vpc_security_group_egress_rule" "task_https" {
  security_group_id = aws_security_group.task.id
  description       = "HTTPS to S3, ECR, Secrets Manager and CloudWatch Logs through the NAT gateway"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

################################################################################
# Load balancer (the internal origin ALB: the shield's or the edges' upstream)
################################################################################

resource "aws_lb" "this" {
  #checkov:skip=CKV2_AWS_28:Internal load balancer reachable only from inside the VPC; no WAF needed.
  #checkov:skip=CKV2_AWS_20:Internal plain-HTTP origin listener on 8001, nothing to redirect; TLS ends at the public ALB/CloudFront.
  #checkov:skip=CKV_AWS_91:Access logs are optional (var.access_logs_bucket).
  name_prefix                = "tsorg-"
  load_balancer_type         = "application"
  internal                   = true
  subnets                    = var.private_subnet_ids
  security_groups            = [aws_security_group.lb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  # Blocking playlist requests are held up to 3 × target duration (6 s); 60 s leaves room.
  idle_timeout = 60
  tags         = merge(var.tags, { Name = "${var.name}-origin" })

  dynamic "access_logs" {
    for_each = var.access_logs_bucket == null ? [] : [var.access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = "${var.name}/origin"
      enabled = true
    }
  }
}

resource "aws_lb_target_group" "this" {
  #checkov:skip=CKV_AWS_378:VPC-internal hop from edges to the origin tier; TLS ends at the public ALB/CloudFront.
  name_prefix = "tsorg-"
  port        = local.origin_port
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = var.vpc_id
  # A forwarded blocking request can take up to tier_forward_timeout_seconds (15 s).
  deregistration_delay = 20
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

resource "aws_lb_listener" "this" {
  #checkov:skip=CKV_AWS_2:Internal listener inside the VPC; listeners reach the origin only through edges, which terminate TLS.
  #checkov:skip=CKV_AWS_103:No TLS on this VPC-internal listener (see CKV_AWS_2).
  load_balancer_arn = aws_lb.this.arn
  port              = local.origin_port
  protocol          = "HTTP"
  tags              = var.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }
}

################################################################################
# Task, service, autoscaling
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

  volume {
    name = "data"
  }

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([
    {
      name                   = local.container_name
      image                  = var.image
      essential              = true
      command                = ["tier"]
      readonlyRootFilesystem = true
      # A tiny init as PID 1 forwards SIGTERM and reaps children.
      linuxParameters = { initProcessEnabled = true }
      stopTimeout     = 30

      portMappings = [
        { containerPort = local.origin_port, protocol = "tcp" },
      ]

      environment = [
        for k, v in local.container_environment : { name = k, value = tostring(v) } if v != null
      ]
      secrets = [
        for k, v in local.container_secrets : { name = k, valueFrom = v } if v != null
      ]

      # Every held request is a connection in and one out to the owner.
      ulimits = [
        { name = "nofile", softLimit = 65536, hardLimit = 65536 },
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
        startPeriod = 10
      }

      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.this.name
          awslogs-region        = data.aws_region.current.name
          awslogs-stream-prefix = "tier"
        }
      }
    }
  ])
}

resource "aws_ecs_service" "this" {
  name                               = var.name
  cluster                            = var.cluster_arn
  task_definition                    = aws_ecs_task_definition.this.arn
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  propagate_tags                     = "SERVICE"
  desired_count                      = var.desired_count
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = 15
  enable_execute_command             = false
  wait_for_steady_state              = false
  tags                               = var.tags

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.task.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.this.arn
    container_name   = local.container_name
    container_port   = local.origin_port
  }

  # Autoscaling owns the count after the first apply.
  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener.this]
}

resource "aws_appautoscaling_target" "this" {
  service_namespace  = "ecs"
  resource_id        = "service/${local.cluster_name}/${aws_ecs_service.this.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_count
  max_capacity       = var.max_count
  tags               = var.tags
}

resource "aws_appautoscaling_policy" "cpu" {
  name               = "${var.name}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  resource_id        = aws_appautoscaling_target.this.resource_id
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.cpu_target_percent
    scale_out_cooldown = 60
    # Scale in slowly; a removed replica first drains for the deregistration delay.
    scale_in_cooldown = 300

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}
